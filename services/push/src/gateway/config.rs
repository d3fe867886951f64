//! The stand-in's configuration: a small TOML file, flags over it, and the credentials it
//! accepts (public halves only). Defaults serve on loopback, which is the only place a
//! stand-in that hands out tokens to whoever holds a registered key and shows what it
//! received belongs; `allow_non_loopback` says otherwise on purpose.
//!
//! ```toml
//! data_dir = "push-gateway"          # TLS certificate and key, registrations.json
//! fcm_listen = "127.0.0.1:8441"      # OAuth token endpoint and FCM HTTP v1
//! apns_listen = "127.0.0.1:8442"     # APNs, HTTP/2 only
//! cert_names = ["push.test"]         # more names for the self-signed certificate
//! # tls_cert = "cert.pem"            # a certificate of your own instead (with tls_key)
//! # tls_key = "key.pem"
//! # allow_non_loopback = false
//! # apns_token_update_interval_s_min = 1200   # Apple's TooManyProviderTokenUpdates; 0: off
//!
//! [[fcm_service_accounts]]
//! client_email = "pbx@pbx-test.iam.gserviceaccount.com"
//! project_id = "pbx-test"
//! private_key_id = "…"               # optional: then a JWT's kid must match it
//! public_key_file = "fcm-public.pem" # or public_key_pem = """-----BEGIN PUBLIC KEY-----…"""
//!
//! [[apns_keys]]
//! team_id = "ABCD1234"
//! key_id = "KEY1234567"
//! public_key_file = "apns-public.pem"
//! topics = ["org.example.app"]       # a bundle ID allows <bundle>.voip too; empty: any
//! ```
//!
//! Relative paths in the file are relative to the file's folder.

use super::machine::{ApnsKeyEntry, FcmAccount, Registry};
use crate::keys::{EcPublicKey, RsaPublicKey};
use serde::{Deserialize, Serialize};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

/// Where the OAuth endpoint and FCM listen unless told.
pub const DEFAULT_FCM_LISTEN: &str = "127.0.0.1:8441";
/// Where APNs listens unless told.
pub const DEFAULT_APNS_LISTEN: &str = "127.0.0.1:8442";
/// The data directory unless told.
pub const DEFAULT_DATA_DIR: &str = "push-gateway";
/// The largest config file or public key file read.
pub const CONFIG_BYTES_MAX: usize = 1024 * 1024;

/// The flags `pbx push-gateway` and its `make-credentials` share; each overrides the file.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Flags {
    /// TOML config file (services/push/src/gateway/config.rs shows one); flags override it.
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Data directory: TLS certificate and key, registrations.json [default: ./push-gateway]
    #[arg(long, value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// OAuth token endpoint and FCM HTTP v1 (HTTPS, h2 and http/1.1) [default: 127.0.0.1:8441]
    #[arg(long, value_name = "ADDR:PORT", global = true)]
    pub fcm_listen: Option<String>,
    /// APNs (HTTPS, HTTP/2 only) [default: 127.0.0.1:8442]
    #[arg(long, value_name = "ADDR:PORT", global = true)]
    pub apns_listen: Option<String>,
    /// More names (DNS or IP) for the self-signed certificate made at first start; repeatable.
    #[arg(long, value_name = "NAME", global = true)]
    pub cert_name: Vec<String>,
    /// Listen on addresses other than loopback (the stand-in trusts whoever holds a registered
    /// key and shows what it received to anyone who asks).
    #[arg(long, global = true)]
    pub allow_non_loopback: bool,
}

/// An FCM service account the gateway accepts assertions from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FcmAccountConfig {
    /// The assertions' `iss`.
    pub client_email: String,
    /// The project its access tokens may send in.
    pub project_id: String,
    /// When set, an assertion's `kid` (if any) must equal it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_id: Option<String>,
    /// The RSA public key, `BEGIN PUBLIC KEY` PEM (or `public_key_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_pem: Option<String>,
    /// A file holding that PEM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_file: Option<PathBuf>,
}

/// An APNs signing key the gateway accepts provider tokens from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApnsKeyConfig {
    /// The provider tokens' `iss`.
    pub team_id: String,
    /// The provider tokens' `kid`.
    pub key_id: String,
    /// Topics the key may push to; a bundle ID allows `<bundle>.voip` too. Empty: any.
    #[serde(default)]
    pub topics: Vec<String>,
    /// The P-256 public key, `BEGIN PUBLIC KEY` PEM (or `public_key_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_pem: Option<String>,
    /// A file holding that PEM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_file: Option<PathBuf>,
}

/// Registered credentials: the config file's, and `DATA_DIR/registrations.json`'s.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registrations {
    /// Accounts whose assertions the OAuth endpoint accepts.
    #[serde(default)]
    pub fcm_service_accounts: Vec<FcmAccountConfig>,
    /// Keys whose provider tokens APNs accepts.
    #[serde(default)]
    pub apns_keys: Vec<ApnsKeyConfig>,
}

/// Why the configuration cannot work; `pbx push-gateway` exits 2 with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read {0}: {1}")]
    Read(String, String),
    #[error("{0}: {1}")]
    Parse(String, String),
    #[error("{0} {1:?}: {2}")]
    Listen(&'static str, String, String),
    #[error(
        "{0} {1} is not a loopback address: the stand-in hands tokens to whoever holds a registered key \
         and shows what it received to anyone; pass --allow-non-loopback to mean it"
    )]
    NotLoopback(&'static str, SocketAddr),
    #[error("tls_cert and tls_key go together")]
    TlsPair,
    #[error("{0}: {1}")]
    Registration(String, String),
}

/// Everything the gateway runs with.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// TLS certificate and key (when made here), `registrations.json`.
    pub data_dir: PathBuf,
    /// `ADDR:PORT` of the OAuth endpoint and FCM.
    pub fcm_listen: String,
    /// `ADDR:PORT` of APNs.
    pub apns_listen: String,
    /// Names for the self-signed certificate besides loopback's and the listen hosts.
    pub cert_names: Vec<String>,
    /// A certificate chain to serve instead of the self-signed one (with `tls_key`).
    pub tls_cert: Option<PathBuf>,
    /// Its private key.
    pub tls_key: Option<PathBuf>,
    /// Listen on addresses other than loopback.
    pub allow_non_loopback: bool,
    /// Apple's `TooManyProviderTokenUpdates` interval; 0 leaves it unchecked.
    pub apns_token_update_interval_s_min: u64,
    /// Credentials accepted from the start (the config file's).
    pub registrations: Registrations,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    fcm_listen: Option<String>,
    apns_listen: Option<String>,
    #[serde(default)]
    cert_names: Vec<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    #[serde(default)]
    allow_non_loopback: bool,
    #[serde(default)]
    apns_token_update_interval_s_min: u64,
    #[serde(default)]
    fcm_service_accounts: Vec<FcmAccountConfig>,
    #[serde(default)]
    apns_keys: Vec<ApnsKeyConfig>,
}

impl GatewayConfig {
    /// The defaults, with `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> GatewayConfig {
        GatewayConfig {
            data_dir: data_dir.into(),
            fcm_listen: DEFAULT_FCM_LISTEN.into(),
            apns_listen: DEFAULT_APNS_LISTEN.into(),
            cert_names: Vec::new(),
            tls_cert: None,
            tls_key: None,
            allow_non_loopback: false,
            apns_token_update_interval_s_min: 0,
            registrations: Registrations::default(),
        }
    }

    /// Both listeners on `127.0.0.1` with ports the system picks: for tests.
    pub fn for_tests(data_dir: impl Into<PathBuf>) -> GatewayConfig {
        GatewayConfig {
            fcm_listen: "127.0.0.1:0".into(),
            apns_listen: "127.0.0.1:0".into(),
            ..GatewayConfig::new(data_dir)
        }
    }

    /// The file named by `--config` (if any) with the flags over it.
    pub fn load(flags: &Flags) -> Result<GatewayConfig, ConfigError> {
        let mut config = GatewayConfig::new(DEFAULT_DATA_DIR);
        if let Some(path) = &flags.config {
            let text = read_text(path)?;
            let file: FileConfig =
                toml::from_str(&text).map_err(|e| ConfigError::Parse(path.display().to_string(), e.to_string()))?;
            let base = path.parent().unwrap_or(Path::new("."));
            let rebase = |p: PathBuf| if p.is_relative() { base.join(p) } else { p };
            if let Some(dir) = file.data_dir {
                config.data_dir = rebase(dir);
            }
            config.fcm_listen = file.fcm_listen.unwrap_or(config.fcm_listen);
            config.apns_listen = file.apns_listen.unwrap_or(config.apns_listen);
            config.cert_names = file.cert_names;
            config.tls_cert = file.tls_cert.map(rebase);
            config.tls_key = file.tls_key.map(rebase);
            config.allow_non_loopback = file.allow_non_loopback;
            config.apns_token_update_interval_s_min = file.apns_token_update_interval_s_min;
            config.registrations = Registrations {
                fcm_service_accounts: file
                    .fcm_service_accounts
                    .into_iter()
                    .map(|a| FcmAccountConfig { public_key_file: a.public_key_file.clone().map(rebase), ..a })
                    .collect(),
                apns_keys: file
                    .apns_keys
                    .into_iter()
                    .map(|k| ApnsKeyConfig { public_key_file: k.public_key_file.clone().map(rebase), ..k })
                    .collect(),
            };
        }
        if let Some(dir) = &flags.data_dir {
            config.data_dir = dir.clone();
        }
        if let Some(listen) = &flags.fcm_listen {
            config.fcm_listen = listen.clone();
        }
        if let Some(listen) = &flags.apns_listen {
            config.apns_listen = listen.clone();
        }
        config.cert_names.extend(flags.cert_name.iter().cloned());
        config.allow_non_loopback |= flags.allow_non_loopback;
        if config.tls_cert.is_some() != config.tls_key.is_some() {
            return Err(ConfigError::TlsPair);
        }
        config.listen_addrs()?;
        config.registrations.registry()?;
        Ok(config)
    }

    /// The FCM and APNs listen addresses, resolved and checked against loopback.
    pub fn listen_addrs(&self) -> Result<(Vec<SocketAddr>, Vec<SocketAddr>), ConfigError> {
        Ok((
            resolve("fcm_listen", &self.fcm_listen, self.allow_non_loopback)?,
            resolve("apns_listen", &self.apns_listen, self.allow_non_loopback)?,
        ))
    }

    /// The listen hosts as given (for the certificate's names and URLs).
    pub fn listen_hosts(&self) -> Vec<String> {
        [&self.fcm_listen, &self.apns_listen]
            .iter()
            .filter_map(|l| {
                l.trim().rsplit_once(':').map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']').to_string())
            })
            .collect()
    }
}

fn resolve(name: &'static str, listen: &str, allow_non_loopback: bool) -> Result<Vec<SocketAddr>, ConfigError> {
    let listen = listen.trim();
    let (_, port) =
        listen.rsplit_once(':').ok_or_else(|| ConfigError::Listen(name, listen.into(), "expected ADDR:PORT".into()))?;
    port.parse::<u16>().map_err(|_| ConfigError::Listen(name, listen.into(), format!("{port:?} is not a port")))?;
    let addrs: Vec<SocketAddr> = listen
        .to_socket_addrs()
        .map_err(|e| ConfigError::Listen(name, listen.into(), format!("cannot resolve: {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(ConfigError::Listen(name, listen.into(), "resolves to no address".into()));
    }
    if !allow_non_loopback && let Some(public) = addrs.iter().find(|a| !a.ip().is_loopback()) {
        return Err(ConfigError::NotLoopback(name, *public));
    }
    Ok(addrs)
}

/// A text file, bounded.
pub fn read_text(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    let failed = |e: std::io::Error| ConfigError::Read(path.display().to_string(), e.to_string());
    let mut text = String::new();
    std::fs::File::open(path)
        .map_err(failed)?
        .take(CONFIG_BYTES_MAX as u64 + 1)
        .read_to_string(&mut text)
        .map_err(failed)?;
    if text.len() > CONFIG_BYTES_MAX {
        return Err(ConfigError::Read(path.display().to_string(), format!("larger than {CONFIG_BYTES_MAX} bytes")));
    }
    Ok(text)
}

/// The PEM inline, or read from the file.
fn public_pem(who: &str, inline: &Option<String>, file: &Option<PathBuf>) -> Result<String, ConfigError> {
    match (inline, file) {
        (Some(pem), None) => Ok(pem.clone()),
        (None, Some(path)) => read_text(path),
        _ => Err(ConfigError::Registration(who.into(), "give one of public_key_pem, public_key_file".into())),
    }
}

impl FcmAccountConfig {
    /// The account with its key read.
    pub fn resolve(&self) -> Result<FcmAccount, ConfigError> {
        let who = format!("service account {:?}", self.client_email);
        if self.client_email.is_empty() || self.project_id.is_empty() {
            return Err(ConfigError::Registration(who, "client_email and project_id must not be empty".into()));
        }
        let pem = public_pem(&who, &self.public_key_pem, &self.public_key_file)?;
        let key = RsaPublicKey::from_pem(&pem).map_err(|e| ConfigError::Registration(who, e.to_string()))?;
        Ok(FcmAccount {
            client_email: self.client_email.clone(),
            project_id: self.project_id.clone(),
            private_key_id: self.private_key_id.clone(),
            key,
        })
    }
}

impl ApnsKeyConfig {
    /// The key with its public half read.
    pub fn resolve(&self) -> Result<ApnsKeyEntry, ConfigError> {
        let who = format!("APNs key {:?}", self.key_id);
        if self.team_id.is_empty() || self.key_id.is_empty() {
            return Err(ConfigError::Registration(who, "team_id and key_id must not be empty".into()));
        }
        let pem = public_pem(&who, &self.public_key_pem, &self.public_key_file)?;
        let key = EcPublicKey::from_pem(&pem).map_err(|e| ConfigError::Registration(who, e.to_string()))?;
        Ok(ApnsKeyEntry {
            team_id: self.team_id.clone(),
            key_id: self.key_id.clone(),
            key,
            topics: self.topics.clone(),
        })
    }
}

impl Registrations {
    /// Every entry resolved; the first bad one is the error.
    pub fn registry(&self) -> Result<Registry, ConfigError> {
        let mut registry = Registry::default();
        for account in &self.fcm_service_accounts {
            if !registry.add_fcm(account.resolve()?) {
                return Err(ConfigError::Registration(
                    account.client_email.clone(),
                    "too many service accounts".into(),
                ));
            }
        }
        for key in &self.apns_keys {
            if !registry.add_apns(key.resolve()?) {
                return Err(ConfigError::Registration(key.key_id.clone(), "too many APNs keys".into()));
            }
        }
        Ok(registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the file's values, relative paths and the flags' precedence.
    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let (_, public) = crate::keys::generate_ec().unwrap();
        std::fs::write(dir.path().join("apns.pem"), public).unwrap();
        let file = dir.path().join("gateway.toml");
        std::fs::write(
            &file,
            r#"
data_dir = "state"
fcm_listen = "127.0.0.1:9441"
cert_names = ["push.test"]
[[apns_keys]]
team_id = "TEAM1"
key_id = "KEY1"
public_key_file = "apns.pem"
topics = ["org.example.app"]
"#,
        )
        .unwrap();
        let flags =
            Flags { config: Some(file.clone()), apns_listen: Some("127.0.0.1:9442".into()), ..Flags::default() };
        let config = GatewayConfig::load(&flags).unwrap();
        assert_eq!(config.data_dir, dir.path().join("state"));
        assert_eq!((config.fcm_listen.as_str(), config.apns_listen.as_str()), ("127.0.0.1:9441", "127.0.0.1:9442"));
        assert_eq!(config.registrations.registry().unwrap().apns["KEY1"].topics, vec!["org.example.app"]);
        std::fs::write(&file, "data_dir = 3\n").unwrap();
        assert!(matches!(GatewayConfig::load(&flags), Err(ConfigError::Parse(..))));
        std::fs::write(&file, "unknown = 1\n").unwrap();
        assert!(matches!(GatewayConfig::load(&flags), Err(ConfigError::Parse(..))));
    }

    // Proves listening off loopback needs the explicit switch, and bad addresses are named.
    #[test]
    fn loopback_unless_allowed() {
        let mut config = GatewayConfig::new("/nonexistent");
        assert!(config.listen_addrs().is_ok());
        config.fcm_listen = "0.0.0.0:8441".into();
        assert!(matches!(config.listen_addrs(), Err(ConfigError::NotLoopback("fcm_listen", _))));
        config.allow_non_loopback = true;
        assert!(config.listen_addrs().is_ok());
        config.apns_listen = "8442".into();
        assert!(matches!(config.listen_addrs(), Err(ConfigError::Listen("apns_listen", ..))));
    }

    // Proves a registration needs exactly one key source and a key of the right kind.
    #[test]
    fn registrations_are_checked() {
        let (_, ec) = crate::keys::generate_ec().unwrap();
        let apns = ApnsKeyConfig {
            team_id: "T".into(),
            key_id: "K".into(),
            topics: vec![],
            public_key_pem: Some(ec.clone()),
            public_key_file: None,
        };
        assert!(apns.resolve().is_ok());
        assert!(ApnsKeyConfig { public_key_pem: None, ..apns.clone() }.resolve().is_err());
        let fcm = FcmAccountConfig {
            client_email: "a@b".into(),
            project_id: "p".into(),
            private_key_id: None,
            public_key_pem: Some(ec),
            public_key_file: None,
        };
        assert!(fcm.resolve().unwrap_err().to_string().contains("RSA"), "an EC key is no service-account key");
    }
}

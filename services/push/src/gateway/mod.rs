//! `pbx push-gateway`: a local stand-in for Google's FCM HTTP v1 (with its OAuth 2.0 token
//! endpoint) and Apple's APNs, serving the same endpoints with the same validation and error
//! formats, and recording what it received, so a PBX's RFC 8599 push flow runs whole on one
//! machine in tests.
//!
//! Two listeners, as the real services are two hosts: FCM (`fcm_listen`: `POST /token`,
//! `POST /v1/projects/{id}/messages:send`; ALPN h2 and http/1.1) and APNs (`apns_listen`:
//! `POST /3/device/{token}`; ALPN h2 only, like Apple). Both serve the test endpoints
//! `GET|DELETE /_gateway/received` and `POST /_gateway/unregister/{token}`. TLS is rustls with
//! ring and a self-signed certificate (rcgen) made at first start in the data directory,
//! unless `tls_cert`/`tls_key` name one.
//!
//! Data directory: `tls-cert.pem`, `tls-key.pem` (0600), `registrations.json` (the public
//! halves `make-credentials` registered; read again whenever it changes).
//!
//! Calling contract for the binary: set up logging, then [`main`] (it builds its own tokio
//! runtime and exits 2 on a configuration error). Tests use [`start`] and the [`Gateway`]
//! handle. Not here: persistence of what was received, quotas, anything Google or Apple do
//! after accepting a push.

mod apns;
mod config;
mod credentials;
mod fcm;
mod listener;
mod machine;

pub use self::config::{
    ApnsKeyConfig, CONFIG_BYTES_MAX, ConfigError, DEFAULT_APNS_LISTEN, DEFAULT_DATA_DIR, DEFAULT_FCM_LISTEN,
    FcmAccountConfig, Flags, GatewayConfig, Registrations,
};
pub use self::credentials::{
    Credentials, CredentialsError, CredentialsRequest, GATEWAY_CERT_FILE, REGISTRATIONS_FILE, SERVICE_ACCOUNT_FILE,
    make_credentials, read_registrations,
};
pub use self::listener::{CONNECTION_S_MAX, CONNECTIONS_MAX, HEADER_BYTES_MAX, STREAMS_MAX, TLS_HANDSHAKE_TIMEOUT_S};
pub use self::machine::{
    ACCESS_TOKEN_LIFETIME_S, ACCESS_TOKENS_MAX, CLOCK_SKEW_S, RECEIVED_BODY_BYTES_MAX, RECEIVED_MAX, REGISTRATIONS_MAX,
    ReceivedPush, Service, UNREGISTERED_MAX,
};
pub use apns::{PAYLOAD_BYTES_MAX as APNS_PAYLOAD_BYTES_MAX, VOIP_PAYLOAD_BYTES_MAX as APNS_VOIP_PAYLOAD_BYTES_MAX};
pub use fcm::FCM_REQUEST_BYTES_MAX;

use self::listener::{RegistrationsFile, Shared};
use self::machine::{Core, Listener, Settings};
use anyhow::Context;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// The self-signed certificate made at first start (clients trust this file).
pub const CERT_FILE: &str = "tls-cert.pem";
/// Its private key (0600).
pub const CERT_KEY_FILE: &str = "tls-key.pem";

/// `pbx push-gateway [FLAGS] [make-credentials …]`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where to serve and what to accept (also read by `make-credentials`).
    #[command(flatten)]
    pub flags: Flags,
    /// None: serve.
    #[command(subcommand)]
    pub command: Option<GatewayCommand>,
}

/// What `pbx push-gateway` does besides serving.
#[derive(clap::Subcommand, Debug)]
pub enum GatewayCommand {
    /// Write an FCM service-account JSON and an APNs .p8 that the gateway accepts, and
    /// register their public halves in the data directory.
    MakeCredentials(MakeCredentialsArgs),
}

/// `make-credentials`' own flags.
#[derive(clap::Args, Debug)]
pub struct MakeCredentialsArgs {
    /// Directory for fcm-service-account.json, AuthKey_KEYID.p8 and gateway-cert.pem
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Firebase project ID (RFC 8599 pn-param for FCM)
    #[arg(long, value_name = "ID", default_value = "pbx-push-test")]
    pub project_id: String,
    /// Service account email [default: pbx-push@PROJECT-ID.iam.gserviceaccount.com]
    #[arg(long, value_name = "EMAIL")]
    pub client_email: Option<String>,
    /// Apple team ID (the start of RFC 8599 pn-param for APNs)
    #[arg(long, value_name = "ID", default_value = "PBXTEAM001")]
    pub team_id: String,
    /// APNs key ID [default: ten random letters and digits]
    #[arg(long, value_name = "ID")]
    pub key_id: Option<String>,
    /// The app's bundle ID; the key may push to it and to BUNDLE.voip
    #[arg(long, value_name = "ID", default_value = "org.example.pbx")]
    pub bundle_id: String,
}

/// Runs `pbx push-gateway`: serves until SIGTERM or SIGINT, or runs `make-credentials`.
/// Exit status: 0 done, 1 failed, 2 a bad flag or config.
pub fn main(args: Args) -> ExitCode {
    let config = match GatewayConfig::load(&args.flags) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("pbx push-gateway: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(GatewayCommand::MakeCredentials(make)) = args.command {
        return match make_credentials_command(&config, make) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("pbx push-gateway make-credentials: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pbx push-gateway: start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("pbx push-gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Serves until SIGTERM or SIGINT.
pub async fn run(config: GatewayConfig) -> anyhow::Result<()> {
    let gateway = start(config).await?;
    // On stdout, for whoever configures the PBX.
    println!("fcm: {} (token_uri {})", gateway.fcm_url(), gateway.token_uri());
    println!("apns: {}", gateway.apns_url());
    println!("certificate: {}", gateway.cert_path().display());
    tracing::info!(fcm = %gateway.fcm_url(), apns = %gateway.apns_url(), "pbx push gateway ready");
    pbx_host::wait_for_shutdown_signal().await?;
    tracing::info!("shutting down");
    gateway.shutdown().await;
    Ok(())
}

/// A running gateway: its addresses, what it received, and a way to stop it.
pub struct Gateway {
    fcm_addr: SocketAddr,
    apns_addr: SocketAddr,
    cert_path: PathBuf,
    shared: Arc<Shared>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Binds both listeners and starts serving (on the current tokio runtime).
pub async fn start(config: GatewayConfig) -> anyhow::Result<Gateway> {
    let (fcm_addrs, apns_addrs) = config.listen_addrs()?;
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("create data directory {}", dir.display()))?;
    // Best effort, as the licence service does: the key files in it are 0600 anyway.
    let _ = std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700));
    let registry = config.registrations.registry()?;
    let (certs, key, cert_path) = tls_material(&config).context("set up TLS")?;
    let fcm_tls = server_config(&certs, &key, vec![b"h2".to_vec(), b"http/1.1".to_vec()])?;
    let apns_tls = server_config(&certs, &key, vec![b"h2".to_vec()])?;
    let settings = Settings { apns_token_update_interval_s_min: config.apns_token_update_interval_s_min };
    let shared = Arc::new(Shared {
        core: Core::new(registry, settings, rand::random()),
        registrations: RegistrationsFile::new(dir),
    });
    shared.registrations.refresh(&shared.core);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let fcm = bind(&fcm_addrs).await.with_context(|| format!("bind FCM listener {}", config.fcm_listen))?;
    let apns = bind(&apns_addrs).await.with_context(|| format!("bind APNs listener {}", config.apns_listen))?;
    let (fcm_addr, apns_addr) = (fcm.local_addr()?, apns.local_addr()?);
    let tasks = vec![
        tokio::spawn(listener::serve(fcm, fcm_tls, Listener::Fcm, shared.clone(), stopped.clone())),
        tokio::spawn(listener::serve(apns, apns_tls, Listener::Apns, shared.clone(), stopped)),
    ];
    Ok(Gateway { fcm_addr, apns_addr, cert_path, shared, stop, tasks })
}

/// The first of `addrs` that binds.
async fn bind(addrs: &[SocketAddr]) -> std::io::Result<tokio::net::TcpListener> {
    let mut last = std::io::Error::other("no address");
    for addr in addrs {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => return Ok(listener),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// `https://host:port` of a bound address; a wildcard address is reached as localhost.
fn url(addr: SocketAddr) -> String {
    match addr.ip() {
        ip if ip.is_unspecified() => format!("https://localhost:{}", addr.port()),
        IpAddr::V4(ip) => format!("https://{ip}:{}", addr.port()),
        IpAddr::V6(ip) => format!("https://[{ip}]:{}", addr.port()),
    }
}

impl Gateway {
    /// The FCM listener's bound address.
    pub fn fcm_addr(&self) -> SocketAddr {
        self.fcm_addr
    }

    /// The APNs listener's bound address.
    pub fn apns_addr(&self) -> SocketAddr {
        self.apns_addr
    }

    /// The FCM origin: the PBX's FCM endpoint in place of `https://fcm.googleapis.com`.
    pub fn fcm_url(&self) -> String {
        url(self.fcm_addr)
    }

    /// The service-account `token_uri` in place of `https://oauth2.googleapis.com/token`.
    pub fn token_uri(&self) -> String {
        format!("{}/token", self.fcm_url())
    }

    /// The APNs origin in place of `https://api.push.apple.com`.
    pub fn apns_url(&self) -> String {
        url(self.apns_addr)
    }

    /// The certificate clients must trust.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// What was received so far, oldest first.
    pub fn received(&self) -> Vec<ReceivedPush> {
        self.shared.core.state().received.iter().cloned().collect()
    }

    /// Marks a token unregistered: FCM answers 404 `UNREGISTERED`, APNs 410 `Unregistered`.
    pub fn unregister(&self, token: &str, now_unix_ms: u64) {
        self.shared.core.state().unregister(token, now_unix_ms);
    }

    /// Forgets every access token handed out: their holders get 401 and must exchange a new
    /// assertion, as after Google revokes or expires a token.
    pub fn revoke_access_tokens(&self) {
        self.shared.core.state().grants.clear();
    }

    /// Registers a service account's public half (as the config file would).
    pub fn register_fcm(&self, account: &FcmAccountConfig) -> Result<(), ConfigError> {
        let account = account.resolve()?;
        let email = account.client_email.clone();
        if !self.shared.core.state().registry.add_fcm(account) {
            return Err(ConfigError::Registration(email, "too many service accounts".into()));
        }
        Ok(())
    }

    /// Registers an APNs key's public half (as the config file would).
    pub fn register_apns(&self, key: &ApnsKeyConfig) -> Result<(), ConfigError> {
        let key = key.resolve()?;
        let id = key.key_id.clone();
        if !self.shared.core.state().registry.add_apns(key) {
            return Err(ConfigError::Registration(id, "too many APNs keys".into()));
        }
        Ok(())
    }

    /// Stops accepting, closes connections (a GOAWAY, then two seconds), and returns.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// The names a new certificate is made for: loopback's, each listen host unless a wildcard,
/// and the configured names.
fn cert_names(config: &GatewayConfig) -> Vec<String> {
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    let hosts = config.listen_hosts().into_iter().filter(|h| !h.parse::<IpAddr>().is_ok_and(|ip| ip.is_unspecified()));
    for name in hosts.chain(config.cert_names.iter().cloned()) {
        if !name.is_empty() && !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// The certificate chain, key and the certificate's path: the configured pair, or
/// `DATA_DIR/tls-cert.pem` and `tls-key.pem`, made self-signed at first start
/// (`pbx_host::tls`, as the licence service and SIP over TLS do).
fn tls_material(
    config: &GatewayConfig,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, PathBuf)> {
    let (cert_path, key_path, names) = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => (cert.clone(), key.clone(), None),
        _ => (config.data_dir.join(CERT_FILE), config.data_dir.join(CERT_KEY_FILE), Some(cert_names(config))),
    };
    let identity = pbx_host::tls::identity(&cert_path, &key_path, names.as_deref())?;
    if identity.created {
        tracing::info!(path = %cert_path.display(), ?names, "self-signed TLS certificate created");
    }
    Ok((identity.chain, identity.key, cert_path))
}

/// A TLS server configuration with the ring provider and these ALPN protocols.
fn server_config(
    certs: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    alpn: Vec<Vec<u8>>,
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs.to_vec(), key.clone_key())
        .context("TLS certificate and key do not match")?;
    config.alpn_protocols = alpn;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// `make-credentials` from the command line: the gateway's certificate made if missing and
/// copied beside the credentials, the pair written and registered, and what to configure.
fn make_credentials_command(config: &GatewayConfig, make: MakeCredentialsArgs) -> anyhow::Result<()> {
    let (fcm_addrs, _) = config.listen_addrs()?;
    let fcm = fcm_addrs.first().copied().context("the FCM listen address resolves to nothing")?;
    let token_uri = format!("{}/token", url(fcm));
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("create {}", config.data_dir.display()))?;
    let (_, _, cert_path) = tls_material(config).context("set up TLS")?;
    let request = CredentialsRequest {
        out_dir: make.out.clone(),
        token_uri: token_uri.clone(),
        project_id: make.project_id,
        client_email: make.client_email,
        team_id: make.team_id,
        key_id: make.key_id,
        bundle_id: make.bundle_id,
    };
    let made = make_credentials(&config.data_dir, &request)?;
    let cert_copy = make.out.join(credentials::GATEWAY_CERT_FILE);
    let cert = std::fs::read(&cert_path).with_context(|| format!("read {}", cert_path.display()))?;
    credentials::write_file(&cert_copy, &cert, 0o644)?;
    println!("wrote {}", made.service_account_path.display());
    println!("wrote {}", made.apns_key_path.display());
    println!("wrote {}", cert_copy.display());
    println!("fcm: project {}, service account {}", made.project_id, made.client_email);
    println!("fcm endpoint: {} (token_uri {token_uri})", url(fcm));
    let (_, apns_addrs) = config.listen_addrs()?;
    if let Some(apns) = apns_addrs.first() {
        println!("apns endpoint: {}", url(*apns));
    }
    println!(
        "apns: team {}, key {}, topic {}.voip (pn-param {})",
        made.team_id, made.key_id, made.bundle_id, made.apns_pn_param
    );
    println!("registered in {}", config.data_dir.join(credentials::REGISTRATIONS_FILE).display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    // Proves the flags parse before and after the subcommand, as `pbx push-gateway` takes them.
    #[test]
    fn flags_parse() {
        let cli = Cli::try_parse_from([
            "pbx",
            "--data-dir",
            "d",
            "make-credentials",
            "--out",
            "o",
            "--fcm-listen",
            "127.0.0.1:1",
        ])
        .unwrap();
        assert_eq!(cli.args.flags.data_dir, Some(PathBuf::from("d")));
        assert_eq!(cli.args.flags.fcm_listen.as_deref(), Some("127.0.0.1:1"));
        assert!(matches!(cli.args.command, Some(GatewayCommand::MakeCredentials(m))
                if m.out == Path::new("o") && m.team_id == "PBXTEAM001"));
        let serve = Cli::try_parse_from(["pbx", "--apns-listen", "127.0.0.1:2", "--allow-non-loopback"]).unwrap();
        assert!(serve.args.command.is_none() && serve.args.flags.allow_non_loopback);
    }

    // Proves a bad config exits 2 before anything starts, and `make-credentials` from the
    // command line writes the pair and the certificate copy and registers the public halves.
    #[test]
    fn command_line() {
        let dir = tempfile::tempdir().unwrap();
        let missing = Flags { config: Some(dir.path().join("missing.toml")), ..Flags::default() };
        assert_eq!(main(Args { flags: missing, command: None }), ExitCode::from(2));
        let (data, out) = (dir.path().join("data"), dir.path().join("out"));
        let make = MakeCredentialsArgs {
            out: out.clone(),
            project_id: "p".into(),
            client_email: None,
            team_id: "TEAM".into(),
            key_id: Some("KEY".into()),
            bundle_id: "org.example.app".into(),
        };
        let flags = Flags { data_dir: Some(data.clone()), ..Flags::default() };
        assert_eq!(main(Args { flags, command: Some(GatewayCommand::MakeCredentials(make)) }), ExitCode::SUCCESS);
        for file in [SERVICE_ACCOUNT_FILE, "AuthKey_KEY.p8", GATEWAY_CERT_FILE] {
            assert!(out.join(file).is_file(), "{file}");
        }
        assert_eq!(std::fs::read(out.join(GATEWAY_CERT_FILE)).unwrap(), std::fs::read(data.join(CERT_FILE)).unwrap());
        let registered = read_registrations(&data).unwrap();
        assert_eq!((registered.fcm_service_accounts.len(), registered.apns_keys.len()), (1, 1));
        let account: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join(SERVICE_ACCOUNT_FILE)).unwrap()).unwrap();
        assert_eq!(account["token_uri"], format!("https://{DEFAULT_FCM_LISTEN}/token"));
    }

    // Proves certificate names cover loopback, the listen hosts (not wildcards) and extras.
    #[test]
    fn certificate_names() {
        let mut config = GatewayConfig::new("/nonexistent");
        config.fcm_listen = "0.0.0.0:1".into();
        config.apns_listen = "push.test:2".into();
        config.cert_names = vec!["extra.test".into(), "localhost".into()];
        assert_eq!(cert_names(&config), vec!["localhost", "127.0.0.1", "::1", "push.test", "extra.test"]);
    }
}

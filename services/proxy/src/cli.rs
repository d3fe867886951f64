//! `pbx proxy init` (the link's certificates) and `pbx proxy run` (the proxy itself).

use crate::edge;
use crate::ledger::{self, LedgerConfig};
use crate::link::{self, Hub};
use crate::media::Channels;
use crate::wire;
use anyhow::Context;
use pbx_cluster::identity::{self, NodeIdentity, NodeName};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: ProxyCommand,
}

#[derive(clap::Subcommand)]
enum ProxyCommand {
    /// Make the link's certificates, on the PBX: a proxy CA (ca.pem, ca.key), the PBX's
    /// (pbx.pem, pbx.key) and the proxy's (proxy.pem, proxy.key). Give the proxy ca.pem,
    /// proxy.pem and proxy.key; the PBX keeps ca.pem, pbx.pem and pbx.key ([proxy] identity).
    Init {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Run the proxy: softphones connect to it, the PBX dials out to it.
    Run(Box<RunArgs>),
}

#[derive(clap::Args, Clone)]
pub struct RunArgs {
    /// Where the proxy keeps its records (proxy.redb) and its self-signed TLS certificate.
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// ca.pem, proxy.pem and proxy.key from `pbx proxy init`.
    #[arg(long, value_name = "DIR")]
    pub identity: PathBuf,
    /// UDP address the PBX's QUIC link reaches.
    #[arg(long, default_value = "0.0.0.0:5070")]
    pub link_listen: SocketAddr,
    /// SIP over TLS for softphones ("off": none).
    #[arg(long, default_value = "0.0.0.0:5061")]
    pub sip_tls_listen: String,
    /// SIP over plain TCP for softphones ("off", the default: passwords never cross in clear
    /// anyway, but names and numbers would).
    #[arg(long, default_value = "off")]
    pub sip_tcp_listen: String,
    /// SIP over UDP for softphones ("off", the default: like TCP, in clear; and no SRTP keys
    /// are ever put into SDP over it).
    #[arg(long, default_value = "off")]
    pub sip_udp_listen: String,
    /// HTTPS for one-time softphone provisioning ("off": none).
    #[arg(long, default_value = "0.0.0.0:8444")]
    pub provisioning_listen: String,
    /// Plain HTTP for `GET /metrics` (Prometheus text, counts only; "off": none). Loopback by
    /// default: expose it only to the monitoring.
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub metrics_listen: String,
    /// IP the media sockets bind to.
    #[arg(long, default_value = "0.0.0.0")]
    pub media_bind: IpAddr,
    /// IP written into the softphones' SDP (the proxy's public address); default: the bind IP,
    /// required when that is unspecified.
    #[arg(long)]
    pub media_address: Option<IpAddr>,
    /// TLS certificate (PEM) for the softphones' side; with --tls-key. Default: self-signed in
    /// the data directory.
    #[arg(long, requires = "tls_key")]
    pub tls_certificate: Option<PathBuf>,
    #[arg(long, requires = "tls_certificate")]
    pub tls_key: Option<PathBuf>,
    /// Days a softphone session is kept after its last use.
    #[arg(long, default_value_t = 365)]
    pub session_retention_days: u32,
    /// Days a debug record (a call's destination) is kept.
    #[arg(long, default_value_t = 28)]
    pub debug_retention_days: u32,
    /// Days debug mode lasts when the PBX's admin switches it on without a length.
    #[arg(long, default_value_t = 28)]
    pub debug_mode_days: u32,
}

pub fn main(args: Args) -> ExitCode {
    match args.command {
        ProxyCommand::Init { out } => init(&out),
        ProxyCommand::Run(run_args) => {
            let run_args = *run_args;
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("pbx proxy: start runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run(run_args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("pbx proxy: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init(out: &Path) -> ExitCode {
    let names = [wire::PBX_NAME, wire::PROXY_NAME].map(|n| NodeName::new(n).expect("valid node names"));
    match identity::init(out, &names) {
        Ok(files) => {
            for file in files {
                println!("wrote {}", file.display());
            }
            println!("Give the proxy ca.pem, proxy.pem and proxy.key; the PBX uses ca.pem, pbx.pem and pbx.key.");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pbx proxy init: {e}");
            ExitCode::from(2)
        }
    }
}

fn listen(flag: &str, value: &str) -> anyhow::Result<Option<SocketAddr>> {
    if value == "off" {
        return Ok(None);
    }
    value.parse().map(Some).with_context(|| format!("--{flag} {value:?}: an IP:port or \"off\""))
}

/// Runs the proxy until SIGTERM or SIGINT.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls_listen = listen("sip-tls-listen", &args.sip_tls_listen)?;
    let tcp_listen = listen("sip-tcp-listen", &args.sip_tcp_listen)?;
    let udp_listen = listen("sip-udp-listen", &args.sip_udp_listen)?;
    let provisioning_listen = listen("provisioning-listen", &args.provisioning_listen)?;
    let metrics_listen = listen("metrics-listen", &args.metrics_listen)?;
    // Before anything counts: what is counted before the recorder is lost.
    let prometheus = match metrics_listen {
        Some(_) => Some(
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .context("install the metrics recorder")?,
        ),
        None => None,
    };
    let advertised = match args.media_address {
        Some(ip) => ip,
        None if args.media_bind.is_unspecified() => {
            anyhow::bail!(
                "--media-address: needed when --media-bind is {} (phones must be told an address)",
                args.media_bind
            )
        }
        None => args.media_bind,
    };
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("create {}", args.data_dir.display()))?;

    let name = NodeName::new(wire::PROXY_NAME).expect("a valid node name");
    let id = NodeIdentity::load(&args.identity, &name)
        .with_context(|| format!("--identity {}: the proxy's link certificate", args.identity.display()))?;
    let endpoint = pbx_cluster::link::server_endpoint(&id, args.link_listen, wire::ALPN)?;

    let (cert, key) = match (&args.tls_certificate, &args.tls_key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => (args.data_dir.join("tls-cert.pem"), args.data_dir.join("tls-key.pem")),
    };
    let names = [advertised.to_string(), "localhost".to_string()];
    let self_signed = args.tls_certificate.is_none().then_some(&names[..]);
    let tls_identity = pbx_host::tls::identity(&cert, &key, self_signed)?;
    let acceptor = |alpn: &[&[u8]]| -> anyhow::Result<tokio_rustls::TlsAcceptor> {
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(pbx_host::tls::server_config(&tls_identity, alpn)?)))
    };

    let config = LedgerConfig {
        session_retention_days: args.session_retention_days,
        debug_retention_days: args.debug_retention_days,
        debug_mode_days: args.debug_mode_days,
    };
    let (ledger, ledger_task) = ledger::start(&args.data_dir, config).await?;
    let hub = Hub::new(Channels::new(args.media_bind, advertised), ledger.clone());
    let slots = edge::slots();

    // On stdout, for whoever configures the phones and the PBX.
    println!("link: {} (QUIC)", endpoint.local_addr()?);
    println!("tls fingerprint: {}", tls_identity.fingerprint);
    let mut tasks = vec![tokio::spawn(link::serve(endpoint.clone(), hub.clone()))];
    if let Some(addr) = tls_listen {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("bind SIP TLS {addr}"))?;
        let bound = listener.local_addr()?;
        println!("sip tls: {bound}");
        hub.provisioning.set_server(serde_json::json!({
            "sip_tls": std::net::SocketAddr::new(advertised, bound.port()).to_string(),
            "tls_fingerprint": tls_identity.fingerprint,
        }));
        tasks.push(tokio::spawn(edge::serve(listener, Some(acceptor(&[])?), hub.clone(), slots.clone())));
    }
    if let Some(addr) = tcp_listen {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("bind SIP TCP {addr}"))?;
        println!("sip tcp: {}", listener.local_addr()?);
        tasks.push(tokio::spawn(edge::serve(listener, None, hub.clone(), slots.clone())));
    }
    if let Some(addr) = udp_listen {
        let socket = tokio::net::UdpSocket::bind(addr).await.with_context(|| format!("bind SIP UDP {addr}"))?;
        println!("sip udp: {}", socket.local_addr()?);
        tasks.push(tokio::spawn(edge::serve_udp(Arc::new(socket), hub.clone(), slots.clone())));
    }
    if let Some(addr) = provisioning_listen {
        let listener =
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("bind provisioning {addr}"))?;
        println!("provisioning: {}", listener.local_addr()?);
        tasks.push(tokio::spawn(edge::serve_provisioning(
            listener,
            acceptor(&[b"http/1.1"])?,
            hub.clone(),
            slots.clone(),
        )));
    }
    if let (Some(addr), Some(prometheus)) = (metrics_listen, prometheus) {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("bind metrics {addr}"))?;
        println!("metrics: {}", listener.local_addr()?);
        let metrics_slots = slots.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else { continue };
                let Ok(slot) = metrics_slots.take(peer) else { continue };
                let prometheus = prometheus.clone();
                tokio::spawn(async move {
                    crate::provision::serve_get(stream, |path| match path {
                        "/metrics" => ("200 OK", "text/plain; version=0.0.4", prometheus.render()),
                        _ => ("404 Not Found", "text/plain", "not found\n".into()),
                    })
                    .await;
                    drop(slot);
                });
            }
        }));
    }
    tracing::info!("proxy ready");

    pbx_host::wait_for_shutdown_signal().await?;
    tracing::info!("proxy stopping");
    for task in tasks {
        task.abort();
    }
    endpoint.close(0u32.into(), b"proxy stopping");
    // Drain, not stop: what the sessions told the ledger before the signal is still written.
    let _ = ledger.drain();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), ledger_task).await;
    Ok(())
}

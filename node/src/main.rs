//! `pbx`: one binary for the appliance, the simulator (`pbx sim`, which runs the `pbx-sim`
//! binary installed beside it: the simulator is test tooling and is not compiled in), the
//! licence service (`pbx licence-server`), the cluster's identities and status (`pbx cluster
//! init`, `pbx cluster status`), and (as later issues add them) the cluster node and the
//! benchmarks' load harness.

/// mimalloc rather than glibc's malloc: a call's set-up allocates and frees thousands of small
/// buffers across the endpoint shards, the call actors and the CDR writer, on different threads;
/// with glibc's arenas that was ~18 % of the CPU of a call (perf, 2,000 calls/s), see
/// docs/PERFORMANCE.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc v3's `mi_option_purge_delay` (mimalloc.h, `mi_option_e`: the 16th option; its
/// default in options.c is 1,000 ms; libmimalloc-sys names no constant for it). With the
/// default, memory freed by ended calls lingered in the threads' pages and memory per active
/// call measured 30–40 KiB against glibc's 28; purged at once, 23–25 KiB at the same CPU per
/// call (docs/PERFORMANCE.md).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// mimalloc v3's `mi_option_allow_thp` (the 44th option; on by default). mimalloc asks for
/// transparent huge pages on its arenas (`MADV_HUGEPAGE`), so with memory purged at once a
/// freed range came back as a fresh 2 MiB page, zeroed whole: 3.5 % of a call's CPU at 2,500
/// calls/s in `clear_page_erms`, and a few milliseconds of set-up time whenever a thread
/// waited on one. Without huge pages, CPU per call fell by about a tenth and set-up time from
/// 4–6 ms to 1 ms (docs/PERFORMANCE.md).
const MI_OPTION_ALLOW_THP: libmimalloc_sys::mi_option_t = 43;

/// Allocator options, set before any thread starts. An operator's `MIMALLOC_PURGE_DELAY` or
/// `MIMALLOC_ALLOW_THP` in the environment wins (mimalloc reads those itself).
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mimalloc's options are plain integers it reads when it purges; setting one
        // from the main thread before the runtime starts races with nothing.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // mimalloc applies the option only when it starts, before main: its first arena is
        // already marked for huge pages, so the process's own switch does the rest (the
        // kernel checks it at each page fault).
        // SAFETY: as above.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ALLOW_THP, 0) };
        if let Err(error) = rustix::thread::disable_transparent_huge_pages(true) {
            eprintln!("pbx: transparent huge pages could not be switched off for the process: {error}");
        }
    }
}

use clap::{Parser, Subcommand};
use pbx_node::config::{Config, Flags, LogFormat};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "pbx", version, about = "A clustered, privacy-first telephone exchange")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a single-node appliance on an embedded redb data directory.
    Appliance {
        /// TOML config file; flags override it.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        #[command(flatten)]
        run: RunFlags,
    },
    /// Run a cluster node: the config file's [cluster] section names this node, its
    /// certificates, its Raft listen address and every member (voter or witness).
    Node {
        /// TOML config file with a [cluster] section; flags override it.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[command(flatten)]
        run: RunFlags,
    },
    /// Run pbx's own machines over simulated days against a simulated office, network and
    /// disk, with faults, checking invariants: runs the `pbx-sim` binary beside this one with
    /// the same flags (`pbx sim --help` shows them).
    #[command(disable_help_flag = true)]
    Sim {
        /// The flags for `pbx-sim`, passed on unchanged.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<std::ffi::OsString>,
    },
    /// Run the licence and voucher service: signs licences for serials, redeems vouchers, over
    /// HTTPS with a self-signed certificate made at first start.
    LicenceServer(pbx_licence_service::Args),
    /// The softphone proxy: a public edge through which softphones reach this PBX without a
    /// VPN; the PBX dials out to it ([proxy] in its config). `init` makes the link's
    /// certificates, `run` runs it.
    Proxy(pbx_proxy_service::cli::Args),
    /// A local stand-in for FCM and APNs (push notifications): the same endpoints, checks and
    /// errors, recording what it received; `make-credentials` writes a matching FCM service
    /// account and APNs key
    PushGateway(pbx_push_service::gateway::Args),
    /// Data-subject rights against the running node (export, erase, restrict, object,
    /// rectify), its privacy audit and inventory, and the generated privacy notice.
    Privacy(pbx_node::privacy::cli::Args),
    /// The cluster: its identities (a CA and a certificate per node, for the nodes' mutually
    /// authenticated QUIC links) and a running node's view of it.
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

/// The flags `pbx appliance` and `pbx node` share.
#[derive(clap::Args)]
struct RunFlags {
    /// Data directory (redb files, admin token) [default: ./pbx-data]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// SIP over UDP and TCP [default: 0.0.0.0:5060]
    #[arg(long, value_name = "ADDR:PORT")]
    sip_listen: Option<String>,
    /// SIP over TLS, or `off` [default: the --sip-listen IP, port 5061]
    #[arg(long, value_name = "ADDR:PORT|off")]
    sip_tls_listen: Option<String>,
    /// Admin HTTP API [default: 127.0.0.1:8080]
    #[arg(long, value_name = "ADDR:PORT")]
    http_listen: Option<String>,
    /// UDP ports for RTP media [default: 20000-29999]
    #[arg(long, value_name = "LOW-HIGH")]
    rtp_ports: Option<String>,
    /// IP address put into SDP for media [default: the --sip-listen IP, 127.0.0.1 if that is 0.0.0.0]
    #[arg(long, value_name = "IP")]
    media_address: Option<String>,
    /// Log format on stderr [default: human]
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
}

impl RunFlags {
    fn with_config(self, config: Option<PathBuf>) -> Flags {
        let RunFlags { data_dir, sip_listen, sip_tls_listen, http_listen, rtp_ports, media_address, log_format } = self;
        Flags { data_dir, config, sip_listen, sip_tls_listen, http_listen, rtp_ports, media_address, log_format }
    }
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Make a new cluster CA and one certificate + key per node in DIR (never overwrites).
    Init {
        /// Directory for ca.pem, ca.key, <node>.pem, <node>.key (created 0700 if missing)
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Node names, comma separated: 1-32 characters of a-z, 0-9 and '-'
        #[arg(long, value_name = "NAME,NAME,...")]
        nodes: String,
    },
    /// A running node's view of the cluster: raft state and log, each member's replication
    /// and actor link.
    Status(pbx_node::cluster::cli::StatusArgs),
}

/// `pbx sim`: replaces this process with the `pbx-sim` found next to the running `pbx`, so its
/// output and exit status (0 clean, 1 a violation, 2 a bad flag) are the simulator's own.
fn sim(args: Vec<std::ffi::OsString>) -> ExitCode {
    use std::os::unix::process::CommandExt;
    let path = match std::env::current_exe() {
        Ok(exe) => exe.with_file_name("pbx-sim"),
        Err(e) => {
            eprintln!("pbx sim: cannot find the running pbx binary to look for pbx-sim beside it: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !path.is_file() {
        eprintln!(
            "pbx sim: the simulator is its own binary and {} does not exist; build it with \
             `cargo build --release -p pbx-simulator --bin pbx-sim` and put it beside pbx",
            path.display()
        );
        return ExitCode::FAILURE;
    }
    // Returns only if the exec failed.
    let e = std::process::Command::new(&path).args(args).exec();
    eprintln!("pbx sim: run {}: {e}", path.display());
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    let node = matches!(cli.command, Command::Node { .. });
    let flags = match cli.command {
        Command::Appliance { config, run } => run.with_config(config),
        Command::Node { config, run } => run.with_config(Some(config)),
        Command::Sim { args } => return sim(args),
        Command::LicenceServer(args) => return licence_server(args),
        Command::Proxy(args) => {
            init_logging(LogFormat::Human);
            return pbx_proxy_service::cli::main(args);
        }
        Command::PushGateway(args) => {
            init_logging(LogFormat::Human);
            return pbx_push_service::gateway::main(args);
        }
        Command::Privacy(args) => return pbx_node::privacy::cli::main(args),
        Command::Cluster(ClusterCommand::Init { out, nodes }) => return cluster_init(&out, &nodes),
        Command::Cluster(ClusterCommand::Status(args)) => return pbx_node::cluster::cli::main(args),
    };
    let config = match Config::load(&flags) {
        Ok(c) if node && c.cluster.is_none() => {
            eprintln!("pbx node: the config file has no [cluster] section (a single node is `pbx appliance`)");
            return ExitCode::from(2);
        }
        Ok(c) => c,
        Err(e) => {
            eprintln!("pbx: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.log_format);
    // Before the runtime and any socket: every descriptor opened later counts against it.
    pbx_node::sip::limits::raise_and_log(
        u64::from(config.rtp_ports.high.saturating_sub(config.rtp_ports.low)) + 1,
        pbx_node::sip::transport::tcp_connections_cap,
    );
    let prometheus = match metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder() {
        Ok(h) => h,
        Err(e) => {
            eprintln!("pbx: install metrics recorder: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pbx: start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(pbx_node::appliance::run(config, prometheus)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("pbx: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn licence_server(args: pbx_licence_service::Args) -> ExitCode {
    if let Err(e) = pbx_licence_service::check_args(&args) {
        eprintln!("pbx licence-server: {e}");
        return ExitCode::from(2);
    }
    init_logging(LogFormat::Human);
    pbx_node::sip::limits::raise_and_log(0, pbx_node::sip::transport::tcp_connections_cap);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pbx: start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(pbx_licence_service::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("pbx licence-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn cluster_init(out: &std::path::Path, nodes: &str) -> ExitCode {
    use pbx_cluster::identity::{self, InitError};
    let written = identity::parse_node_names(nodes).map_err(InitError::from).and_then(|n| identity::init(out, &n));
    match written {
        Ok(files) => {
            for file in files {
                println!("wrote {}", file.display());
            }
            println!("Give each node ca.pem, <node>.pem and <node>.key; keep ca.key off the nodes (it adds nodes).");
            ExitCode::SUCCESS
        }
        Err(e @ (InitError::Name(_) | InitError::Exists(_))) => {
            eprintln!("pbx cluster init: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("pbx cluster init: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The option numbers pbx sets are mimalloc's purge delay and its huge pages switch: they
    /// start at options.c's defaults (1,000 ms; on) and read back as set (a renumbered option
    /// in a newer mimalloc fails here); the process's huge pages are off after.
    #[test]
    fn the_allocator_options_set_are_the_purge_delay_and_huge_pages() {
        // SAFETY: reading and writing integer options; no other test touches them.
        unsafe {
            assert_eq!(libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY), 1000);
            assert_eq!(libmimalloc_sys::mi_option_get(MI_OPTION_ALLOW_THP), 1);
            tune_allocator();
            assert_eq!(libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY), 0);
            assert_eq!(libmimalloc_sys::mi_option_get(MI_OPTION_ALLOW_THP), 0);
        }
        assert!(rustix::thread::transparent_huge_pages_are_disabled().expect("prctl"));
    }
}

//! `pbx privacy …`: the subject-rights commands an operator runs on the PBX's machine. They
//! go through the running node's admin API (with `DATA_DIR/admin.token`), so each request is
//! checked and audited exactly as an API call is; `notice` needs no running node.

use crate::config::{Config, Flags};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
    /// The node's config file (for its data directory and API address)
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The node's data directory (for admin.token) [default: the config's, else ./pbx-data]
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// The node's admin API [default: http://<the config's http_listen>]
    #[arg(long, global = true, value_name = "URL")]
    api: Option<String>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Everything pbx holds about an extension, number or IP address, as JSON (Art. 15, 20).
    Export { subject: String },
    /// Erase the subject from every category; refused while it is in a call (Art. 17).
    Erase { subject: String },
    /// Keep the subject's data but stop processing it: no call history, no statistics (Art. 18).
    Restrict {
        subject: String,
        /// Lift the restriction instead.
        #[arg(long)]
        lift: bool,
    },
    /// Object to processing on legitimate interest: no statistics (Art. 21).
    Object {
        subject: String,
        /// Withdraw the objection instead.
        #[arg(long)]
        withdraw: bool,
    },
    /// Correct the extension's display name (Art. 16).
    Rectify {
        subject: String,
        #[arg(long, value_name = "NAME")]
        display_name: String,
    },
    /// The privacy audit, newest first: retention runs and subject requests.
    Audit {
        /// Only the requests about this subject (matched by its keyed pseudonym).
        #[arg(long)]
        subject: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// The data inventory with this node's retention periods.
    Inventory,
    /// Print the privacy notice generated from the inventory and the config (Markdown).
    Notice {
        #[arg(long, default_value = "en", value_name = "de|en|fr")]
        lang: String,
    },
}

pub fn main(args: Args) -> ExitCode {
    let flags = Flags { config: args.config.clone(), data_dir: args.data_dir.clone(), ..Flags::default() };
    let config = match Config::load(&flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pbx privacy: {e}");
            return ExitCode::from(2);
        }
    };
    let path = |id: &str, what: &str| format!("/api/v1/privacy/subjects/{}/{what}", encode(id));
    let (method, path, body) = match &args.command {
        Command::Notice { lang } => return notice(&config, lang),
        Command::Export { subject } => ("GET", path(subject, "export"), None),
        Command::Erase { subject } => ("POST", path(subject, "erase"), None),
        Command::Restrict { subject, lift } => {
            (if *lift { "DELETE" } else { "POST" }, path(subject, "restriction"), None)
        }
        Command::Object { subject, withdraw } => {
            (if *withdraw { "DELETE" } else { "POST" }, path(subject, "objection"), None)
        }
        Command::Rectify { subject, display_name } => (
            "POST",
            path(subject, "rectification"),
            Some(serde_json::json!({ "display_name": display_name }).to_string()),
        ),
        Command::Audit { subject, limit } => {
            let mut p = format!("/api/v1/privacy/audit?limit={limit}");
            if let Some(s) = subject {
                p.push_str(&format!("&subject={}", encode(s)));
            }
            ("GET", p, None)
        }
        Command::Inventory => ("GET", "/api/v1/privacy/inventory".to_string(), None),
    };
    let token_path = config.data_dir.join(crate::appliance::ADMIN_TOKEN_FILE);
    let token = match std::fs::read_to_string(&token_path) {
        Ok(t) => t.trim().to_string(),
        Err(e) => {
            eprintln!("pbx privacy: read {}: {e} (is --data-dir the node's?)", token_path.display());
            return ExitCode::from(2);
        }
    };
    let base = args.api.clone().unwrap_or_else(|| format!("http://{}", config.http_listen));
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(120)))
        .http_status_as_error(false)
        .build()
        .into();
    let auth = format!("Bearer {token}");
    let sent = match (method, body) {
        ("GET", _) => agent.get(&url).header("authorization", &auth).call(),
        ("DELETE", _) => agent.delete(&url).header("authorization", &auth).call(),
        (_, Some(body)) => {
            agent.post(&url).header("authorization", &auth).header("content-type", "application/json").send(body)
        }
        (_, None) => agent.post(&url).header("authorization", &auth).send_empty(),
    };
    let mut response = match sent {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pbx privacy: {url}: {e} (is the node running?)");
            return ExitCode::FAILURE;
        }
    };
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    let pretty = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or(text);
    if (200..300).contains(&status) {
        println!("{pretty}");
        ExitCode::SUCCESS
    } else {
        eprintln!("pbx privacy: HTTP {status}: {pretty}");
        ExitCode::FAILURE
    }
}

/// Percent-encodes a subject id for a URL path or query (IPv6 colons are fine in paths, but
/// `+` is not in a query).
fn encode(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b':' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Prints the notice from the config alone: no running node needed.
fn notice(config: &Config, lang: &str) -> ExitCode {
    let lang = match lang.parse::<pbx_actors::privacy::notice::Lang>() {
        Ok(l) => l,
        Err(reason) => {
            eprintln!("pbx privacy notice: --lang: {reason}");
            return ExitCode::from(2);
        }
    };
    let operator = crate::privacy::operator(&config.privacy.operator);
    print!("{}", pbx_actors::privacy::notice::notice(lang, &operator, &config.privacy.periods).markdown());
    ExitCode::SUCCESS
}

//! `pbx privacy …`: the subject-rights commands an operator runs on the PBX's machine. They
//! go through the running node's admin API (with `DATA_DIR/admin.token`), so each request is
//! checked and audited exactly as an API call is; `notice` needs no running node.

use crate::api_client::{AdminApi, ApiArgs, pretty};
use crate::config::Config;
use std::process::ExitCode;
use std::time::Duration;

/// Long enough for an export or erasure of a subject with years of records.
const TIMEOUT: Duration = Duration::from_secs(120);

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    api: ApiArgs,
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
    let config = match args.api.load_config() {
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
    let api = match AdminApi::new(&args.api, &config, TIMEOUT) {
        Ok(api) => api,
        Err(e) => {
            eprintln!("pbx privacy: {e}");
            return ExitCode::from(2);
        }
    };
    let reply = match api.call(method, &path, body) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pbx privacy: {e}");
            return ExitCode::FAILURE;
        }
    };
    let pretty = pretty(&reply.body);
    if (200..300).contains(&reply.status) {
        println!("{pretty}");
        ExitCode::SUCCESS
    } else {
        eprintln!("pbx privacy: HTTP {}: {pretty}", reply.status);
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
    print!(
        "{}",
        pbx_actors::privacy::notice::notice(lang, &operator, &config.privacy.periods, &pbx_actors::licence::SCHEDULE)
            .markdown()
    );
    ExitCode::SUCCESS
}

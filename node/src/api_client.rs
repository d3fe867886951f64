//! The admin API as the `pbx` commands that talk to a running node reach it (`pbx privacy …`,
//! `pbx cluster status`): its address from the node's config or `--api`, the admin token from
//! the node's data directory, so each request is checked and audited as any API call is.

use crate::config::{Config, ConfigError, Flags};
use std::path::PathBuf;
use std::time::Duration;

/// The flags every such command takes to find the node.
#[derive(clap::Args, Debug, Clone)]
pub struct ApiArgs {
    /// The node's config file (for its data directory and API address)
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The node's data directory (for admin.token) [default: the config's, else ./pbx-data]
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The node's admin API [default: http://<the config's http_listen>]
    #[arg(long, global = true, value_name = "URL")]
    pub api: Option<String>,
}

impl ApiArgs {
    /// The config the node itself loads from the same `--config` and `--data-dir`.
    pub fn load_config(&self) -> Result<Config, ConfigError> {
        Config::load(&Flags { config: self.config.clone(), data_dir: self.data_dir.clone(), ..Flags::default() })
    }
}

/// A node's admin API, with its token.
pub struct AdminApi {
    base: String,
    auth: String,
    agent: ureq::Agent,
}

/// The node's answer, whatever its status.
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl AdminApi {
    /// Reads the admin token; the error says which file could not be read.
    pub fn new(args: &ApiArgs, config: &Config, timeout: Duration) -> Result<AdminApi, String> {
        let token_path = config.data_dir.join(crate::secrets::ADMIN_TOKEN_FILE);
        let token = std::fs::read_to_string(&token_path)
            .map_err(|e| format!("read {}: {e} (is --data-dir the node's?)", token_path.display()))?;
        let base = args.api.clone().unwrap_or_else(|| format!("http://{}", config.http_listen));
        let agent = ureq::Agent::config_builder().timeout_global(Some(timeout)).http_status_as_error(false).build();
        Ok(AdminApi {
            base: base.trim_end_matches('/').to_string(),
            auth: format!("Bearer {}", token.trim()),
            agent: agent.into(),
        })
    }

    /// Sends one request (`body` as JSON); `Err` only when no answer came, naming the URL.
    pub fn call(&self, method: &str, path: &str, body: Option<String>) -> Result<Reply, String> {
        let url = format!("{}{path}", self.base);
        let auth = self.auth.as_str();
        let sent = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("authorization", auth).call(),
            ("DELETE", _) => self.agent.delete(&url).header("authorization", auth).call(),
            (_, Some(body)) => self
                .agent
                .post(&url)
                .header("authorization", auth)
                .header("content-type", "application/json")
                .send(body),
            (_, None) => self.agent.post(&url).header("authorization", auth).send_empty(),
        };
        let mut response = sent.map_err(|e| format!("{url}: {e} (is the node running?)"))?;
        let status = response.status().as_u16();
        let body = response.body_mut().read_to_string().unwrap_or_default();
        Ok(Reply { status, body })
    }
}

/// The body indented when it is JSON, else as it came.
pub fn pretty(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| text.to_string())
}

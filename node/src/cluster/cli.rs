//! `pbx cluster status`: a cluster node's view of the cluster (its raft role and log, every
//! member's address, replication and actor link), from the running node's admin API
//! (`GET /api/v1/cluster`), as a table or as the node's JSON.

use crate::api_client::{AdminApi, ApiArgs};
use serde::Deserialize;
use std::process::ExitCode;
use std::time::Duration;

const PATH: &str = "/api/v1/cluster";
/// A node that has not answered by then is as good as unreachable for an operator.
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Print the node's JSON answer as it came, not the table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

/// The answer of `GET /api/v1/cluster`. What the table does not show (raft ids, the node's
/// role, which its own row has) is left out, and unknown fields are ignored: a newer node still reads.
#[derive(Deserialize, Debug)]
struct Status {
    node: String,
    /// The raft state: Leader, Follower, Candidate, Learner or Shutdown.
    state: String,
    leader: Option<String>,
    term: u64,
    last_log_index: u64,
    committed: u64,
    applied: u64,
    members: Vec<Member>,
}

#[derive(Deserialize, Debug)]
struct Member {
    name: String,
    /// `voter` or `witness`.
    role: String,
    address: String,
    /// Known on the leader only, like `lag`.
    matched: Option<u64>,
    lag: Option<u64>,
    /// Whether the mesh has a live ractor session with it; unknown for the node itself.
    actor_link: Option<bool>,
}

/// Exit 0 with the status; 1 when the node does not answer or answers an error; 2 when its
/// config or admin token cannot be read.
pub fn main(args: StatusArgs) -> ExitCode {
    let api =
        match args.api.load_config().map_err(|e| e.to_string()).and_then(|c| AdminApi::new(&args.api, &c, TIMEOUT)) {
            Ok(api) => api,
            Err(e) => {
                eprintln!("pbx cluster status: {e}");
                return ExitCode::from(2);
            }
        };
    match api.call("GET", PATH, None).and_then(|reply| report(reply.status, &reply.body, args.json)) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pbx cluster status: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What to print for the node's answer, or why it is no status.
fn report(status: u16, body: &str, json: bool) -> Result<String, String> {
    if !(200..300).contains(&status) {
        #[derive(Deserialize)]
        struct ApiError {
            error: String,
        }
        let why = serde_json::from_str::<ApiError>(body).map(|e| e.error).unwrap_or_else(|_| body.trim().to_string());
        return Err(format!("HTTP {status}{}{why}", if why.is_empty() { "" } else { ": " }));
    }
    if json {
        return Ok(format!("{}\n", body.trim_end()));
    }
    let parsed: Status = serde_json::from_str(body)
        .map_err(|e| format!("the node's answer is not a cluster status ({e}); see --json"))?;
    Ok(render(&parsed))
}

fn render(s: &Status) -> String {
    let leader = s.leader.as_deref().map_or("no leader".to_string(), |l| format!("leader {l}"));
    let mut out = format!(
        "node {} ({}), {leader}, term {}, log {}, committed {}, applied {}\n",
        s.node, s.state, s.term, s.last_log_index, s.committed, s.applied
    );
    let number = |n: Option<u64>| n.map_or("-".to_string(), |n| n.to_string());
    let mut rows = vec![["MEMBER", "ROLE", "ADDRESS", "MATCHED", "LAG", "ACTORS"].map(String::from)];
    rows.extend(s.members.iter().map(|m| {
        let actors = match m.actor_link {
            Some(true) => "up",
            Some(false) => "down",
            None => "-",
        };
        [m.name.clone(), m.role.clone(), m.address.clone(), number(m.matched), number(m.lag), actors.to_string()]
    }));
    let mut widths = [0; 6];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in &rows {
        let line: Vec<String> = row.iter().zip(widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const FOLLOWER: &str = r#"{"node":"vm1","id":123,"role":"voter","state":"Follower","leader":"appliance","term":3,
        "last_log_index":120,"committed":120,"applied":119,
        "members":[
          {"name":"appliance","id":456,"role":"voter","address":"127.0.0.1:7001","matched":null,"lag":null,"actor_link":true},
          {"name":"vm1","id":123,"role":"voter","address":"127.0.0.1:7002","matched":null,"lag":null,"actor_link":null},
          {"name":"witness","id":789,"role":"witness","address":"[::1]:7003","matched":null,"lag":null,"actor_link":false}]}"#;

    /// A follower's answer: header line, aligned columns, "-" for what only the leader knows.
    #[test]
    fn renders_a_followers_view() {
        assert_eq!(
            report(200, FOLLOWER, false).unwrap(),
            "node vm1 (Follower), leader appliance, term 3, log 120, committed 120, applied 119\n\
             MEMBER     ROLE     ADDRESS         MATCHED  LAG  ACTORS\n\
             appliance  voter    127.0.0.1:7001  -        -    up\n\
             vm1        voter    127.0.0.1:7002  -        -    -\n\
             witness    witness  [::1]:7003      -        -    down\n"
        );
    }

    /// The leader knows each member's replication; a node mid-election knows no leader; ids and
    /// fields the CLI does not know yet are ignored.
    #[test]
    fn renders_replication_and_a_missing_leader() {
        let leader = r#"{"node":"appliance","id":1,"role":"voter","state":"Candidate","leader":null,"term":12,
            "last_log_index":1500,"committed":1498,"applied":1498,"future_field":[1,2],
            "members":[{"name":"appliance","id":1,"role":"voter","address":"127.0.0.1:7001","matched":1500,"lag":0,
                        "actor_link":null},
                       {"name":"vm-long-name-2","id":2,"role":"voter","address":"127.0.0.2:7001","matched":1380,
                        "lag":120,"actor_link":true}]}"#;
        assert_eq!(
            report(200, leader, false).unwrap(),
            "node appliance (Candidate), no leader, term 12, log 1500, committed 1498, applied 1498\n\
             MEMBER          ROLE   ADDRESS         MATCHED  LAG  ACTORS\n\
             appliance       voter  127.0.0.1:7001  1500     0    -\n\
             vm-long-name-2  voter  127.0.0.2:7001  1380     120  up\n"
        );
    }

    /// `--json` passes the node's answer through untouched (one trailing newline).
    #[test]
    fn json_is_the_answer_as_it_came() {
        assert_eq!(report(200, FOLLOWER, true).unwrap(), format!("{FOLLOWER}\n"));
    }

    /// An error answer names the status and the node's reason; a body that is no status says so.
    #[test]
    fn errors_say_what_the_node_answered() {
        assert_eq!(
            report(404, r#"{"error":"not a cluster node"}"#, false).unwrap_err(),
            "HTTP 404: not a cluster node"
        );
        assert_eq!(report(401, "", false).unwrap_err(), "HTTP 401");
        assert_eq!(report(502, "bad gateway\n", true).unwrap_err(), "HTTP 502: bad gateway");
        let odd = report(200, r#"{"node":"vm1"}"#, false).unwrap_err();
        assert!(odd.contains("not a cluster status") && odd.contains("missing field"), "{odd}");
    }
}

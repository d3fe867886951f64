//! Node configuration: command-line flags over an optional TOML file over defaults.
//!
//! Precedence is flag > file > default, as with Kamailio's `-l` over `listen=`. A config
//! error names the file, the key (as a dotted path) and what is wrong, and the node does not
//! start: `config file pbx.toml: registrar.min_expires_s: invalid type: string "x", expected u32`.
//! Unknown keys are errors too — a typo must not silently fall back to a default.

use pbx_actors::endpoint::SourceLimit;
use pbx_actors::endpoint::shard::ENDPOINT_SHARDS_MAX;
use pbx_actors::media::actor::MediaIo;
use pbx_actors::registrar::RegistrarConfig;
use pbx_actors::registrar::digest::Algorithm;
use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

pub const DEFAULT_DATA_DIR: &str = "./pbx-data";
pub const DEFAULT_SIP_LISTEN: &str = "0.0.0.0:5060";
/// SIP over TLS listens on the `sip_listen` IP and this port unless told otherwise (RFC 3261
/// §19.1.2: 5061 for `sips:`).
pub const DEFAULT_SIP_TLS_PORT: u16 = 5061;
/// The self-signed certificate and key pbx makes at first start for SIP over TLS when
/// `sip.tls_certificate` is not set (in the data directory).
pub const SIP_TLS_CERT_FILE: &str = "sip-tls-cert.pem";
pub const SIP_TLS_KEY_FILE: &str = "sip-tls-key.pem";
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_RTP_PORTS: &str = "20000-29999";
/// Ringing this long without an answer ends the call (Asterisk's `Dial()` timeout is similar).
pub const DEFAULT_NO_ANSWER_TIMEOUT_S: u32 = 30;
/// An answered call with no RTP for this long is hung up (a phone that vanished without BYE).
pub const DEFAULT_RTP_TIMEOUT_S: u32 = 60;
/// The privacy inventory's default for call detail records (category `cdr`).
pub const DEFAULT_CDR_RETENTION_DAYS: u32 = 90;
/// Allowed values, inclusive: long enough for a real phone, short enough to be a mistake if exceeded.
const NO_ANSWER_TIMEOUT_S_RANGE: (u32, u32) = (1, 600);
const RTP_TIMEOUT_S_RANGE: (u32, u32) = (5, 3_600);
const CDR_RETENTION_DAYS_RANGE: (u32, u32) = (1, 3_650);
/// `[registrar]` failure limits: at least one failure; at most what a failure record holds.
const AUTH_FAILURES_RANGE: (u32, u32) = (1, pbx_actors::registrar::AUTH_FAILURES_LIMIT_MAX);
/// `[registrar] auth_failure_window_s` and `block_s`: a second to a day.
const AUTH_FAILURE_WINDOW_S_RANGE: (u32, u32) = (1, 86_400);
const BLOCK_S_RANGE: (u32, u32) = (1, 86_400);
/// The seed's licence schedule: a check every 24 h, hourly retries, and (the issue's
/// default) 14 days of grace before licensed features switch off.
pub const DEFAULT_LICENCE_CHECK_INTERVAL_H: u32 = 24;
pub const DEFAULT_LICENCE_RETRY_INTERVAL_H: u32 = 1;
pub const DEFAULT_LICENCE_GRACE_DAYS: u32 = 14;
/// The seed's voucher center is asked at start-up and every 24 h.
pub const DEFAULT_VOUCHER_INTERVAL_H: u32 = 24;
/// Numbers no licence limit refuses: police and emergency in Europe (110, 112) and North America.
pub const DEFAULT_EMERGENCY_NUMBERS: [&str; 3] = ["110", "112", "911"];
/// The retention reaper runs this often by default (a record is gone at most one interval after
/// it falls due).
pub const DEFAULT_REAPER_INTERVAL_S: u32 = 3_600;
/// Records one reaper batch (one redb transaction) changes at most.
pub const DEFAULT_REAPER_BATCH: u32 = 500;
/// Extensions declared in one file; more is a typo or an attack on start-up time.
pub const CONFIG_EXTENSIONS_MAX: usize = 10_000;

/// Conference rooms declared in one file.
pub const CONFIG_CONFERENCES_MAX: usize = 1_000;
/// Ring groups in one file.
pub const CONFIG_GROUPS_MAX: usize = 1_000;
/// A room's `max_participants` when the file names none.
pub const DEFAULT_CONFERENCE_MAX_PARTICIPANTS: usize = 50;

/// An inclusive range of UDP ports for RTP, always an even start and odd end so that every
/// RTP port (even) has its RTCP port (odd) beside it (RFC 3550 §11).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub low: u16,
    pub high: u16,
}

impl std::str::FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (low, high) = s.split_once('-').ok_or_else(|| format!("{s:?} is not LOW-HIGH"))?;
        let low: u16 = low.trim().parse().map_err(|_| format!("{low:?} is not a port number"))?;
        let high: u16 = high.trim().parse().map_err(|_| format!("{high:?} is not a port number"))?;
        if low < 1024 || high <= low {
            return Err(format!("{s:?} must satisfy 1024 <= LOW < HIGH"));
        }
        if !low.is_multiple_of(2) || high.is_multiple_of(2) {
            return Err(format!("{s:?} must start on an even port and end on an odd one (RTP/RTCP pairs)"));
        }
        Ok(PortRange { low, high })
    }
}

/// One extension as the config file declares it. The password is hashed at start and never
/// kept, logged or printed (Debug is redacted).
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct ExtensionDecl {
    pub number: String,
    pub password: String,
    #[serde(default)]
    pub display_name: String,
    /// SRTP on the legs toward this extension's phones; `calls.media_encryption` when unset.
    #[serde(default)]
    pub media_encryption: Option<MediaEncryption>,
}

impl std::fmt::Debug for ExtensionDecl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtensionDecl")
            .field("number", &self.number)
            .field("password", &"<redacted>")
            .field("display_name", &self.display_name)
            .field("media_encryption", &self.media_encryption)
            .finish()
    }
}

/// One conference room as the config file declares it (`[[conferences]]`). PINs are never
/// logged or printed (Debug is redacted).
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct ConferenceDecl {
    pub number: String,
    #[serde(default)]
    pub name: String,
    pub pin: Option<String>,
    pub moderator_pin: Option<String>,
    pub max_participants: Option<usize>,
}

impl std::fmt::Debug for ConferenceDecl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConferenceDecl")
            .field("number", &self.number)
            .field("name", &self.name)
            .field("pin", &self.pin.as_ref().map(|_| "<redacted>"))
            .field("moderator_pin", &self.moderator_pin.as_ref().map(|_| "<redacted>"))
            .field("max_participants", &self.max_participants)
            .finish()
    }
}

/// One ring group as the config file declares it (`[[groups]]`).
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct GroupDecl {
    pub number: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub strategy: pbx_actors::registrar::groups::Strategy,
    pub members: Vec<String>,
    pub member_timeout_s: Option<u32>,
    pub no_answer: Option<String>,
    pub no_answer_after_s: Option<u32>,
}

/// `[mixer]`: how conference rooms mix.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct MixerSection {
    talkers_max: Option<usize>,
    speech_threshold: Option<u16>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    sip_listen: Option<String>,
    sip_tls_listen: Option<String>,
    http_listen: Option<String>,
    rtp_ports: Option<String>,
    log_format: Option<LogFormat>,
    #[serde(default)]
    sip: SipSection,
    #[serde(default)]
    registrar: RegistrarSection,
    #[serde(default)]
    calls: CallsSection,
    #[serde(default)]
    licence: LicenceSection,
    #[serde(default)]
    privacy: PrivacySection,
    #[serde(default)]
    extensions: Vec<ExtensionDecl>,
    #[serde(default)]
    conferences: Vec<ConferenceDecl>,
    #[serde(default)]
    groups: Vec<GroupDecl>,
    #[serde(default)]
    mixer: MixerSection,
    #[serde(default)]
    push: PushSection,
    proxy: Option<ProxySection>,
    cluster: Option<ClusterSection>,
}

/// `[proxy]`: the softphone proxy this PBX dials out to (README, "Softphones outside").
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ProxySection {
    link: String,
    identity: PathBuf,
}

/// `[proxy]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// The proxy's link address (its `--link-listen`, as reachable from here).
    pub link: SocketAddr,
    /// ca.pem, pbx.pem and pbx.key from `pbx proxy init`.
    pub identity: PathBuf,
}

/// `[cluster]`: this node's name, its certificate directory, where its Raft links listen, and
/// every member (this node included).
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ClusterSection {
    node: String,
    certs: PathBuf,
    listen: String,
    heartbeat_ms: Option<u64>,
    election_timeout_min_ms: Option<u64>,
    election_timeout_max_ms: Option<u64>,
    members: Vec<MemberSection>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct MemberSection {
    name: String,
    address: String,
    #[serde(default)]
    role: Role,
}

/// A voter serves SIP and media and votes; a witness only votes (a tiny VM breaks ties).
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    Voter,
    Witness,
}

/// The checked `[cluster]` section.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub node: pbx_cluster::identity::NodeName,
    pub certs: PathBuf,
    pub listen: SocketAddr,
    pub role: Role,
    pub members: Vec<pbx_cluster::raft::Member>,
    pub heartbeat: std::time::Duration,
    pub election_min: std::time::Duration,
    pub election_max: std::time::Duration,
}

/// Members a cluster may have: a handful of voters (Raft gains nothing from more).
const CLUSTER_MEMBERS_MAX: usize = 7;

fn cluster_config(c: ClusterSection) -> Result<ClusterConfig, (String, String)> {
    use pbx_cluster::identity::NodeName;
    let err = |key: &str, reason: String| (format!("cluster.{key}"), reason);
    let node = NodeName::new(&c.node).map_err(|e| err("node", e.to_string()))?;
    let listen =
        c.listen.parse::<SocketAddr>().map_err(|e| err("listen", format!("{:?} is not ADDR:PORT ({e})", c.listen)))?;
    if c.members.is_empty() || c.members.len() > CLUSTER_MEMBERS_MAX {
        return Err(err("members", format!("must list 1 to {CLUSTER_MEMBERS_MAX} members, this node included")));
    }
    let mut members = Vec::new();
    for (i, m) in c.members.iter().enumerate() {
        let name = NodeName::new(&m.name).map_err(|e| err(&format!("members[{i}].name"), e.to_string()))?;
        if let Err(e) = m.address.parse::<SocketAddr>() {
            return Err(err(&format!("members[{i}].address"), format!("{:?} is not ADDR:PORT ({e})", m.address)));
        }
        if members.iter().any(|x: &pbx_cluster::raft::Member| x.name == name.as_str()) {
            return Err(err(&format!("members[{i}].name"), format!("{name} is listed twice")));
        }
        members.push(pbx_cluster::raft::Member {
            name: name.as_str().to_string(),
            address: m.address.clone(),
            witness: m.role == Role::Witness,
        });
    }
    pbx_cluster::raft::membership(&members).map_err(|e| err("members", e))?;
    let Some(me) = c.members.iter().find(|m| m.name == node.as_str()) else {
        return Err(err("node", format!("{node} is not among cluster.members")));
    };
    if members.iter().all(|m| m.witness) {
        return Err(err("members", "at least one member must be a voter that serves SIP".into()));
    }
    let ms = std::time::Duration::from_millis;
    let heartbeat = ms(c.heartbeat_ms.unwrap_or(200));
    let election_min = ms(c.election_timeout_min_ms.unwrap_or(1000));
    let election_max = ms(c.election_timeout_max_ms.unwrap_or(2000));
    if heartbeat.is_zero() || election_min <= heartbeat * 2 || election_max <= election_min {
        return Err(err(
            "election_timeout_min_ms",
            "need 0 < heartbeat_ms, 2 × heartbeat_ms < election_timeout_min_ms < election_timeout_max_ms".into(),
        ));
    }
    Ok(ClusterConfig { node, certs: c.certs, listen, role: me.role, members, heartbeat, election_min, election_max })
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct PrivacySection {
    reaper_interval_s: Option<u32>,
    reaper_batch: Option<u32>,
    request_log_anonymise_days: Option<u32>,
    request_log_delete_days: Option<u32>,
    audit_retention_days: Option<u32>,
    push_record_retention_days: Option<u32>,
    #[serde(default)]
    operator: OperatorSection,
}

/// Who runs this PBX, for the generated privacy notice (`pbx privacy notice`, `/privacy`).
#[derive(Deserialize, Debug, Default, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OperatorSection {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub email: String,
    #[serde(default)]
    pub phone: String,
    /// The data protection officer's contact; empty when none is appointed.
    #[serde(default)]
    pub dpo: String,
    /// The competent supervisory authority.
    #[serde(default)]
    pub authority: String,
}

/// The retention reaper's schedule, the periods it enforces, and the operator's details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrivacyConfig {
    pub reaper_interval_s: u32,
    pub reaper_batch: u32,
    /// Every stored category's period; `cdr_days` is `calls.cdr_retention_days`.
    pub periods: pbx_actors::privacy::reaper::Periods,
    pub operator: OperatorSection,
}

/// `[push]`: RFC 8599 push through FCM and APNs (docs in README, "Push").
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct PushSection {
    wait_s: Option<u32>,
    refresh_before_s: Option<u32>,
    ca: Option<PathBuf>,
    fcm: Option<FcmSection>,
    apns: Option<ApnsSection>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct FcmSection {
    service_account: PathBuf,
    url: Option<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ApnsSection {
    key: PathBuf,
    key_id: String,
    team_id: String,
    url: Option<String>,
    sandbox_url: Option<String>,
}

/// Push dispatch's settings; `None` in [`Config::push`] without `[push.fcm]` or `[push.apns]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushConfig {
    /// How long a call waits for a pushed phone's REGISTER (`push.wait_s`).
    pub wait_s: u32,
    /// How long before a push binding expires unrefreshed its app is pushed to register again
    /// (`push.refresh_before_s`, RFC 8599 §5.6).
    pub refresh_before_s: u32,
    /// PEM trusted for the push services' TLS instead of the public roots (the stand-in's
    /// certificate, `pbx push-gateway`).
    pub ca: Option<PathBuf>,
    pub fcm: Option<FcmConfig>,
    pub apns: Option<ApnsConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FcmConfig {
    /// The service account's JSON (its `token_uri` is where access tokens come from).
    pub service_account: PathBuf,
    /// Base URL of the FCM HTTP v1 API.
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApnsConfig {
    /// The `.p8` signing key, its key id and the team id that JWTs name.
    pub key: PathBuf,
    pub key_id: String,
    pub team_id: String,
    pub url: String,
    /// For `pn-provider=apns.dev` (development builds).
    pub sandbox_url: String,
}

/// The longest a call may wait for a pushed phone: beyond it the caller has given up anyway.
pub const PUSH_WAIT_S_RANGE: (u32, u32) = (1, 120);
pub const DEFAULT_PUSH_WAIT_S: u32 = 20;
/// `push.refresh_before_s`: OpenSIPS's `pn_trigger_interval` default; at least the time a
/// woken app needs, at most an hour.
pub const PUSH_REFRESH_BEFORE_S_RANGE: (u32, u32) = (10, 3600);
pub const DEFAULT_PUSH_REFRESH_BEFORE_S: u32 = 120;

fn push_config(section: PushSection) -> Result<Option<PushConfig>, (&'static str, String)> {
    let wait_s = section.wait_s.unwrap_or(DEFAULT_PUSH_WAIT_S);
    if !(PUSH_WAIT_S_RANGE.0..=PUSH_WAIT_S_RANGE.1).contains(&wait_s) {
        return Err(("push.wait_s", format!("must be {}–{}", PUSH_WAIT_S_RANGE.0, PUSH_WAIT_S_RANGE.1)));
    }
    let refresh_before_s = section.refresh_before_s.unwrap_or(DEFAULT_PUSH_REFRESH_BEFORE_S);
    let (low, high) = PUSH_REFRESH_BEFORE_S_RANGE;
    if !(low..=high).contains(&refresh_before_s) {
        return Err(("push.refresh_before_s", format!("must be {low}–{high}")));
    }
    let https = |key: &'static str, url: String| {
        if url.starts_with("https://") { Ok(url) } else { Err((key, format!("{url:?} is not an https:// URL"))) }
    };
    let fcm = match section.fcm {
        Some(f) => Some(FcmConfig {
            service_account: f.service_account,
            url: https("push.fcm.url", f.url.unwrap_or_else(|| "https://fcm.googleapis.com".into()))?,
        }),
        None => None,
    };
    let apns = match section.apns {
        Some(a) => {
            if a.key_id.is_empty() || a.team_id.is_empty() {
                return Err(("push.apns", "key_id and team_id must not be empty".into()));
            }
            Some(ApnsConfig {
                key: a.key,
                key_id: a.key_id,
                team_id: a.team_id,
                url: https("push.apns.url", a.url.unwrap_or_else(|| "https://api.push.apple.com".into()))?,
                sandbox_url: https(
                    "push.apns.sandbox_url",
                    a.sandbox_url.unwrap_or_else(|| "https://api.sandbox.push.apple.com".into()),
                )?,
            })
        }
        None => None,
    };
    if fcm.is_none() && apns.is_none() {
        return Ok(None);
    }
    Ok(Some(PushConfig { wait_s, refresh_before_s, ca: section.ca, fcm, apns }))
}

impl PushConfig {
    /// The RFC 8599 providers this configuration pushes through.
    pub fn providers(&self) -> Vec<String> {
        let mut providers = Vec::new();
        if self.fcm.is_some() {
            providers.push("fcm".to_string());
        }
        if self.apns.is_some() {
            providers.extend(["apns".to_string(), "apns.dev".to_string()]);
        }
        providers
    }
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct LicenceSection {
    serial: Option<String>,
    server_url: Option<String>,
    public_key: Option<String>,
    server_ca: Option<PathBuf>,
    check_interval_h: Option<u32>,
    retry_interval_h: Option<u32>,
    grace_days: Option<u32>,
    voucher_interval_h: Option<u32>,
}

/// Where the licence service is and how pbx trusts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LicenceService {
    /// `https://host:port` (plain `http://` only to a loopback address).
    pub url: String,
    /// The service's Ed25519 key: licences verify offline against it.
    pub public_key: pbx_actors::licence::PublicKey,
    /// A PEM file of the CA (or self-signed certificate) that signed the service's TLS
    /// certificate; without it, the usual web roots.
    pub server_ca: Option<PathBuf>,
}

/// The licence watchdog's and voucher sync's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LicenceConfig {
    /// This PBX's serial number; `None`: made at first start and kept in the data directory.
    pub serial: Option<String>,
    /// `None`: no service configured — pbx runs unlicensed (the base limits), which is not
    /// an error.
    pub service: Option<LicenceService>,
    pub check_interval_h: u32,
    pub retry_interval_h: u32,
    pub grace_days: u32,
    pub voucher_interval_h: u32,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct CallsSection {
    no_answer_timeout_s: Option<u32>,
    rtp_timeout_s: Option<u32>,
    media_address: Option<String>,
    media_io: Option<MediaIo>,
    cdr_retention_days: Option<u32>,
    emergency_numbers: Option<Vec<String>>,
    media_encryption: Option<MediaEncryption>,
    park_orbits: Option<String>,
    park_timeout_s: Option<u32>,
}

/// How calls are handled and how long their records are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallsConfig {
    /// `calls.media_encryption`: SRTP for extensions that set none (`optional` by default:
    /// SRTP with phones on SIP over TLS that offer or accept it).
    pub media_encryption: MediaEncryption,
    pub no_answer_timeout_s: u32,
    pub rtp_timeout_s: u32,
    /// The address written into SDP `c=` lines: where phones send their media. Default: the
    /// SIP listen address, or 127.0.0.1 when that is unspecified (0.0.0.0), since a wildcard
    /// cannot be sent to — a node serving phones on other machines must set it.
    pub media_address: IpAddr,
    /// How the media workers move RTP (`pbx_actors::media::actor`'s module doc, **io_uring**).
    pub media_io: MediaIo,
    /// Call detail records older than this are deleted (privacy category `cdr`).
    pub cdr_retention_days: u32,
    /// Numbers no licence limit ever refuses.
    pub emergency_numbers: Vec<String>,
    /// Call park's orbits (`calls.park_orbits`, "701-720" by default, "off": none): a call
    /// transferred to one waits there until a phone dials it.
    pub park_orbits: Vec<String>,
    /// How long a parked call waits before it rings back the phone that parked it.
    pub park_timeout_s: u32,
}

/// `[sip]`: how much a single source may ask of the SIP listener (docs/SECURITY.md).
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct SipSection {
    source_rate_per_s: Option<u32>,
    source_burst: Option<u32>,
    endpoint_shards: Option<usize>,
    tls_certificate: Option<PathBuf>,
    tls_key: Option<PathBuf>,
}

/// SIP over TLS: where, and with which certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipTls {
    pub listen: SocketAddr,
    /// PEM chain and key (`sip.tls_certificate`, `sip.tls_key`), both or neither; neither:
    /// [`SIP_TLS_CERT_FILE`] and [`SIP_TLS_KEY_FILE`] in the data directory, made
    /// self-signed at first start.
    pub certificate: PathBuf,
    pub key: PathBuf,
    /// The pair is the self-signed default (made when missing), not the operator's.
    pub self_signed: bool,
}

/// The SIP listener's limits on strangers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SipConfig {
    /// New transactions one source address (IPv6: one /64) may start: a token bucket. Beyond
    /// it requests are dropped unanswered and counted (`pbx_sip_rate_limited_total`).
    pub source_limit: SourceLimit,
    /// `sip.endpoint_shards`: SIP endpoint workers (each parses and runs the transactions of
    /// the Call-IDs that hash to it). `None`: one per core, at most `ENDPOINT_SHARDS_MAX`.
    pub endpoint_shards: Option<usize>,
}

impl SipConfig {
    /// The endpoint shards to run: as configured, else one per core (capped).
    pub fn endpoint_shards(&self) -> usize {
        self.endpoint_shards
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()).min(ENDPOINT_SHARDS_MAX))
    }
}

/// Highest `sip.source_rate_per_s` (and burst) accepted: beyond it the limit means nothing.
const SOURCE_RATE_PER_S_MAX: u32 = 1_000_000;

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct RegistrarSection {
    realm: Option<String>,
    min_expires_s: Option<u32>,
    max_expires_s: Option<u32>,
    default_expires_s: Option<u32>,
    nonce_lifetime_s: Option<u32>,
    auth_failures_max: Option<u32>,
    user_auth_failures_max: Option<u32>,
    auth_failure_window_s: Option<u32>,
    block_s: Option<u32>,
    refresh_flush_s: Option<u32>,
    digest_algorithms: Option<Vec<String>>,
    allow_rfc2069: Option<bool>,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// What `pbx appliance` was asked for on its command line.
#[derive(Debug, Default, Clone)]
pub struct Flags {
    pub data_dir: Option<PathBuf>,
    pub config: Option<PathBuf>,
    pub sip_listen: Option<String>,
    pub sip_tls_listen: Option<String>,
    pub http_listen: Option<String>,
    pub rtp_ports: Option<String>,
    pub media_address: Option<String>,
    pub log_format: Option<LogFormat>,
}

pub use pbx_actors::call::MediaEncryption;

/// The configuration the node runs with, every value checked.
#[derive(Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    pub sip_listen: SocketAddr,
    /// `None`: `sip_tls_listen = "off"`.
    pub sip_tls: Option<SipTls>,
    pub http_listen: SocketAddr,
    pub rtp_ports: PortRange,
    pub log_format: LogFormat,
    pub sip: SipConfig,
    pub registrar: RegistrarConfig,
    pub calls: CallsConfig,
    pub licence: LicenceConfig,
    pub privacy: PrivacyConfig,
    pub extensions: Vec<ExtensionDecl>,
    /// Conference rooms (`[[conferences]]`), checked.
    pub conferences: Vec<pbx_actors::conference::actor::RoomDecl>,
    pub mixer: pbx_actors::media::mixer::MixerConfig,
    /// `None`: no push service configured (phones with `pn-*` parameters are called directly).
    pub push: Option<PushConfig>,
    /// `None`: no softphone proxy.
    pub proxy: Option<ProxyConfig>,
    /// `None`: a single appliance, no cluster.
    pub cluster: Option<ClusterConfig>,
    /// The file it was read from (`--config`), to name it in messages about its entries.
    pub file: Option<PathBuf>,
}

impl Config {
    /// Each extension's media encryption: as declared, else `calls.media_encryption`.
    pub fn media_policy(&self) -> pbx_actors::call::MediaPolicy {
        pbx_actors::call::MediaPolicy {
            default: self.calls.media_encryption,
            extensions: self.extensions.iter().filter_map(|e| Some((e.number.clone(), e.media_encryption?))).collect(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {file}: cannot read it: {reason}")]
    Read { file: String, reason: String },
    #[error("config file {file}: {key}: {reason}")]
    Invalid { file: String, key: String, reason: String },
    #[error("{flag}: {reason}")]
    Flag { flag: String, reason: String },
}

impl Config {
    /// Merges flags over the file (if any) over defaults, and checks every value.
    pub fn load(flags: &Flags) -> Result<Config, ConfigError> {
        let file = match &flags.config {
            Some(path) => Some((path.display().to_string(), read_text(path)?)),
            None => None,
        };
        Config::from_text(flags, file.as_ref().map(|(name, text)| (name.as_str(), text.as_str())))
    }

    /// [`Config::load`] with the config file already read: `file` is its name (for errors)
    /// and its text; `flags.config` is not read. The `config` fuzz target's entry point.
    pub fn from_text(flags: &Flags, file: Option<(&str, &str)>) -> Result<Config, ConfigError> {
        let (file_name, file) = match file {
            Some((name, text)) => (name.to_owned(), parse_file(name, text)?),
            None => (String::new(), FileConfig::default()),
        };
        let invalid =
            |key: &str, reason: String| ConfigError::Invalid { file: file_name.clone(), key: key.into(), reason };

        // A value from a flag is blamed on the flag, one from the file on the file's key.
        fn pick<T, E>(
            flag: &Option<String>,
            flag_name: &str,
            file: &Option<String>,
            key: &str,
            default: &str,
            parse: impl Fn(&str) -> Result<T, String>,
            invalid: impl Fn(&str, String) -> E,
        ) -> Result<T, E>
        where
            E: From<ConfigError>,
        {
            if let Some(v) = flag {
                return parse(v).map_err(|reason| ConfigError::Flag { flag: flag_name.into(), reason }.into());
            }
            if let Some(v) = file {
                return parse(v).map_err(|reason| invalid(key, reason));
            }
            Ok(parse(default).expect("defaults are valid"))
        }
        let addr = |s: &str| s.parse::<SocketAddr>().map_err(|e| format!("{s:?} is not ADDR:PORT ({e})"));
        let sip_listen =
            pick(&flags.sip_listen, "--sip-listen", &file.sip_listen, "sip_listen", DEFAULT_SIP_LISTEN, addr, invalid)?;
        let http_listen = pick(
            &flags.http_listen,
            "--http-listen",
            &file.http_listen,
            "http_listen",
            DEFAULT_HTTP_LISTEN,
            addr,
            invalid,
        )?;
        let rtp_ports = pick(
            &flags.rtp_ports,
            "--rtp-ports",
            &file.rtp_ports,
            "rtp_ports",
            DEFAULT_RTP_PORTS,
            |s| s.parse::<PortRange>(),
            invalid,
        )?;
        let default_media = match sip_listen.ip() {
            ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            ip => ip,
        };
        let media_address = pick(
            &flags.media_address,
            "--media-address",
            &file.calls.media_address,
            "calls.media_address",
            &default_media.to_string(),
            parse_media_address,
            invalid,
        )?;
        let calls = CallsConfig {
            media_encryption: file.calls.media_encryption.unwrap_or_default(),
            no_answer_timeout_s: file.calls.no_answer_timeout_s.unwrap_or(DEFAULT_NO_ANSWER_TIMEOUT_S),
            rtp_timeout_s: file.calls.rtp_timeout_s.unwrap_or(DEFAULT_RTP_TIMEOUT_S),
            media_address,
            media_io: file.calls.media_io.unwrap_or_default(),
            cdr_retention_days: file.calls.cdr_retention_days.unwrap_or(DEFAULT_CDR_RETENTION_DAYS),
            emergency_numbers: file
                .calls
                .emergency_numbers
                .unwrap_or_else(|| DEFAULT_EMERGENCY_NUMBERS.map(String::from).to_vec()),
            park_orbits: park_orbits(file.calls.park_orbits.as_deref().unwrap_or(DEFAULT_PARK_ORBITS))
                .map_err(|reason| invalid("calls.park_orbits", reason))?,
            park_timeout_s: file.calls.park_timeout_s.unwrap_or(DEFAULT_PARK_TIMEOUT_S),
        };
        if let Some(bad) =
            calls.emergency_numbers.iter().find(|n| n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(invalid("calls.emergency_numbers", format!("{bad:?} is not a number of digits")));
        }
        let licence = licence_config(file.licence).map_err(|(key, reason)| invalid(key, reason))?;
        let push = push_config(file.push).map_err(|(key, reason)| invalid(key, reason))?;
        let proxy = match file.proxy {
            None => None,
            Some(p) => Some(ProxyConfig {
                link: p.link.parse().map_err(|_| invalid("proxy.link", format!("{:?} is not an IP:port", p.link)))?,
                identity: p.identity,
            }),
        };
        let privacy =
            privacy_config(file.privacy, calls.cdr_retention_days).map_err(|(key, reason)| invalid(key, reason))?;
        for (key, value, (low, high)) in [
            ("calls.no_answer_timeout_s", calls.no_answer_timeout_s, NO_ANSWER_TIMEOUT_S_RANGE),
            ("calls.rtp_timeout_s", calls.rtp_timeout_s, RTP_TIMEOUT_S_RANGE),
            ("calls.cdr_retention_days", calls.cdr_retention_days, CDR_RETENTION_DAYS_RANGE),
            ("calls.park_timeout_s", calls.park_timeout_s, PARK_TIMEOUT_S_RANGE),
        ] {
            if !(low..=high).contains(&value) {
                return Err(invalid(key, format!("{value} is not between {low} and {high}")));
            }
        }
        let data_dir = flags.data_dir.clone().or(file.data_dir).unwrap_or_else(|| DEFAULT_DATA_DIR.into());
        let log_format = flags.log_format.or(file.log_format).unwrap_or_default();

        let d = RegistrarConfig::default();
        let defaults = SourceLimit::default();
        let source_limit = SourceLimit {
            rate_per_s: file.sip.source_rate_per_s.unwrap_or(defaults.rate_per_s),
            burst: file.sip.source_burst.unwrap_or(defaults.burst),
        };
        if source_limit.rate_per_s > SOURCE_RATE_PER_S_MAX {
            return Err(invalid(
                "sip.source_rate_per_s",
                format!("must be at most {SOURCE_RATE_PER_S_MAX} (0 turns the limit off)"),
            ));
        }
        if source_limit.rate_per_s > 0 && !(1..=SOURCE_RATE_PER_S_MAX).contains(&source_limit.burst) {
            return Err(invalid(
                "sip.source_burst",
                format!("must be 1–{SOURCE_RATE_PER_S_MAX} while sip.source_rate_per_s is set"),
            ));
        }
        if let Some(shards) = file.sip.endpoint_shards
            && !(1..=ENDPOINT_SHARDS_MAX).contains(&shards)
        {
            return Err(invalid("sip.endpoint_shards", format!("must be 1–{ENDPOINT_SHARDS_MAX}")));
        }
        let sip = SipConfig { source_limit, endpoint_shards: file.sip.endpoint_shards };
        let default_tls = SocketAddr::new(sip_listen.ip(), DEFAULT_SIP_TLS_PORT).to_string();
        let tls_listen = pick(
            &flags.sip_tls_listen,
            "--sip-tls-listen",
            &file.sip_tls_listen,
            "sip_tls_listen",
            &default_tls,
            |s| if s == "off" { Ok(None) } else { addr(s).map(Some) },
            invalid,
        )?;
        if tls_listen.is_some_and(|tls| tls.port() == sip_listen.port() && tls.port() != 0) {
            return Err(invalid("sip_tls_listen", format!("port {} is sip_listen's (TCP)", sip_listen.port())));
        }
        let sip_tls = match (tls_listen, file.sip.tls_certificate, file.sip.tls_key) {
            (None, _, _) => None,
            (Some(listen), None, None) => Some(SipTls {
                listen,
                certificate: data_dir.join(SIP_TLS_CERT_FILE),
                key: data_dir.join(SIP_TLS_KEY_FILE),
                self_signed: true,
            }),
            (Some(listen), Some(certificate), Some(key)) => {
                Some(SipTls { listen, certificate, key, self_signed: false })
            }
            (Some(_), Some(_), None) => {
                return Err(invalid("sip.tls_key", "missing: sip.tls_certificate is set".into()));
            }
            (Some(_), None, Some(_)) => {
                return Err(invalid("sip.tls_certificate", "missing: sip.tls_key is set".into()));
            }
        };
        let r = file.registrar;
        let registrar = RegistrarConfig {
            realm: r.realm.unwrap_or(d.realm),
            min_expires_s: r.min_expires_s.unwrap_or(d.min_expires_s),
            max_expires_s: r.max_expires_s.unwrap_or(d.max_expires_s),
            default_expires_s: r.default_expires_s.unwrap_or(d.default_expires_s),
            nonce_lifetime_s: r.nonce_lifetime_s.unwrap_or(d.nonce_lifetime_s),
            auth_failures_max: r.auth_failures_max.unwrap_or(d.auth_failures_max),
            user_auth_failures_max: r.user_auth_failures_max.unwrap_or(d.user_auth_failures_max),
            auth_failure_window_s: r.auth_failure_window_s.unwrap_or(d.auth_failure_window_s),
            block_s: r.block_s.unwrap_or(d.block_s),
            allow_rfc2069: r.allow_rfc2069.unwrap_or(d.allow_rfc2069),
            refresh_flush_s: r.refresh_flush_s.unwrap_or(d.refresh_flush_s),
            rooms: Default::default(),
            groups: Default::default(),
            park_orbits: Default::default(),
            push_providers: push.as_ref().map(PushConfig::providers).unwrap_or_default(),
            push_refresh_before_s: push.as_ref().map_or(d.push_refresh_before_s, |p| p.refresh_before_s),
            digest_algorithms: match r.digest_algorithms {
                None => d.digest_algorithms,
                Some(names) => {
                    let mut algorithms = Vec::new();
                    for name in &names {
                        let Some(a) = Algorithm::from_name(name) else {
                            return Err(invalid(
                                "registrar.digest_algorithms",
                                format!("{name:?} is not one of \"SHA-256\", \"MD5\""),
                            ));
                        };
                        if algorithms.contains(&a) {
                            return Err(invalid("registrar.digest_algorithms", format!("{name:?} is listed twice")));
                        }
                        algorithms.push(a);
                    }
                    if algorithms.is_empty() {
                        return Err(invalid("registrar.digest_algorithms", "must list at least one algorithm".into()));
                    }
                    algorithms
                }
            },
        };
        if registrar.realm.is_empty() || !registrar.realm.bytes().all(|b| b.is_ascii_graphic() && b != b'"') {
            return Err(invalid("registrar.realm", "must be printable ASCII without quotes".into()));
        }
        if registrar.min_expires_s == 0 {
            return Err(invalid("registrar.min_expires_s", "must be at least 1".into()));
        }
        if registrar.max_expires_s < registrar.min_expires_s {
            return Err(invalid("registrar.max_expires_s", "must not be below registrar.min_expires_s".into()));
        }
        if !(registrar.min_expires_s..=registrar.max_expires_s).contains(&registrar.default_expires_s) {
            return Err(invalid(
                "registrar.default_expires_s",
                "must lie between min_expires_s and max_expires_s".into(),
            ));
        }
        for (key, value) in [
            ("registrar.nonce_lifetime_s", registrar.nonce_lifetime_s),
            ("registrar.refresh_flush_s", registrar.refresh_flush_s),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1".into()));
            }
        }
        for (key, value, (low, high)) in [
            ("registrar.auth_failures_max", registrar.auth_failures_max, AUTH_FAILURES_RANGE),
            ("registrar.user_auth_failures_max", registrar.user_auth_failures_max, AUTH_FAILURES_RANGE),
            ("registrar.auth_failure_window_s", registrar.auth_failure_window_s, AUTH_FAILURE_WINDOW_S_RANGE),
            ("registrar.block_s", registrar.block_s, BLOCK_S_RANGE),
        ] {
            if !(low..=high).contains(&value) {
                return Err(invalid(key, format!("{value} is not between {low} and {high}")));
            }
        }
        if file.extensions.len() > CONFIG_EXTENSIONS_MAX {
            return Err(invalid("extensions", format!("more than {CONFIG_EXTENSIONS_MAX} entries")));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, ext) in file.extensions.iter().enumerate() {
            if !seen.insert(ext.number.as_str()) {
                return Err(invalid(&format!("extensions[{i}].number"), format!("{:?} is declared twice", ext.number)));
            }
        }
        let conferences = conferences(&file.conferences, &file.extensions, &calls.emergency_numbers)
            .map_err(|(key, reason)| invalid(&key, reason))?;
        let mut registrar = registrar;
        registrar.rooms = conferences.iter().map(|room| room.number.clone()).collect();
        registrar.groups = groups(&file.groups, &file.extensions, &registrar.rooms, &calls.emergency_numbers)
            .map_err(|(key, reason)| invalid(&key, reason))?;
        // Orbits are numbers of their own: a clash with a declared number is an error when the
        // orbits were set, and drops that orbit from the default range.
        let mut calls = calls;
        let emergency = calls.emergency_numbers.clone();
        let taken = |n: &String| {
            file.extensions.iter().any(|e| e.number == *n)
                || registrar.rooms.contains(n)
                || registrar.groups.contains_key(n)
                || emergency.contains(n)
        };
        match (&file.calls.park_orbits, calls.park_orbits.iter().find(|n| taken(n))) {
            (Some(_), Some(clash)) => {
                return Err(invalid(
                    "calls.park_orbits",
                    format!("{clash:?} is also an extension, a room, a group or an emergency number"),
                ));
            }
            _ => calls.park_orbits.retain(|n| !taken(n)),
        }
        registrar.park_orbits = calls.park_orbits.iter().cloned().collect();
        let m = pbx_actors::media::mixer::MixerConfig::default();
        let mixer = pbx_actors::media::mixer::MixerConfig {
            talkers_max: file.mixer.talkers_max.unwrap_or(m.talkers_max),
            speech_threshold: file.mixer.speech_threshold.unwrap_or(m.speech_threshold),
        };
        if !(1..=32).contains(&mixer.talkers_max) {
            return Err(invalid("mixer.talkers_max", format!("{} is not between 1 and 32", mixer.talkers_max)));
        }
        if mixer.speech_threshold > 8_000 {
            return Err(invalid(
                "mixer.speech_threshold",
                format!("{} is not between 0 and 8000", mixer.speech_threshold),
            ));
        }
        let cluster = match file.cluster {
            Some(c) => Some(cluster_config(c).map_err(|(key, reason)| invalid(&key, reason))?),
            None => None,
        };
        Ok(Config {
            data_dir,
            sip_listen,
            sip_tls,
            http_listen,
            rtp_ports,
            log_format,
            sip,
            registrar,
            calls,
            licence,
            privacy,
            extensions: file.extensions,
            conferences,
            mixer,
            push,
            proxy,
            cluster,
            file: flags.config.clone(),
        })
    }
}

/// Call park's orbits when `calls.park_orbits` is not set.
pub const DEFAULT_PARK_ORBITS: &str = "701-720";
/// Orbits at most.
pub const PARK_ORBITS_MAX: u32 = 100;
pub const DEFAULT_PARK_TIMEOUT_S: u32 = 45;
pub const PARK_TIMEOUT_S_RANGE: (u32, u32) = (10, 600);

/// `calls.park_orbits`: "off", or a range "FIRST-LAST" of numbers of the same length.
fn park_orbits(text: &str) -> Result<Vec<String>, String> {
    if text == "off" {
        return Ok(Vec::new());
    }
    let bad = || format!("{text:?} is not \"off\" nor a range such as \"701-720\"");
    let (first, last) = text.split_once('-').ok_or_else(bad)?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 16 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(first) || !digits(last) || first.len() != last.len() {
        return Err(bad());
    }
    let (a, b): (u64, u64) = (first.parse().map_err(|_| bad())?, last.parse().map_err(|_| bad())?);
    if a > b || b - a >= u64::from(PARK_ORBITS_MAX) {
        return Err(format!("{text:?}: the range must run upwards and hold at most {PARK_ORBITS_MAX} orbits"));
    }
    Ok((a..=b).map(|n| format!("{n:0width$}", width = first.len())).collect())
}

/// Checks `[[groups]]`; an error names the key. Members are checked for their shape only: an
/// extension made through the API may be one; a member that is no extension is skipped.
fn groups(
    decls: &[GroupDecl],
    extensions: &[ExtensionDecl],
    rooms: &std::collections::BTreeSet<String>,
    emergency: &[String],
) -> Result<std::collections::BTreeMap<String, pbx_actors::registrar::groups::Group>, (String, String)> {
    use pbx_actors::registrar::groups::{GROUP_MEMBERS_MAX, GROUP_RING_S, GROUP_RING_S_DEFAULT, Group};
    if decls.len() > CONFIG_GROUPS_MAX {
        return Err(("groups".into(), format!("more than {CONFIG_GROUPS_MAX} entries")));
    }
    let digits = |s: &str| !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_digit());
    let number_ok = |s: &str| {
        (1..=pbx_actors::registrar::machine::NUMBER_CHARS_MAX).contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    };
    let mut groups = std::collections::BTreeMap::new();
    for (i, g) in decls.iter().enumerate() {
        let key = |field: &str| format!("groups[{i}].{field}");
        if !digits(&g.number) {
            return Err((key("number"), format!("{:?} is not a number of 1–32 digits", g.number)));
        }
        if groups.contains_key(&g.number) {
            return Err((key("number"), format!("{:?} is declared twice", g.number)));
        }
        if extensions.iter().any(|e| e.number == g.number) || rooms.contains(&g.number) {
            return Err((key("number"), format!("{:?} is also an extension or a conference room", g.number)));
        }
        if emergency.contains(&g.number) {
            return Err((key("number"), format!("{:?} is an emergency number", g.number)));
        }
        if g.members.is_empty() || g.members.len() > GROUP_MEMBERS_MAX {
            return Err((key("members"), format!("must list 1–{GROUP_MEMBERS_MAX} extensions")));
        }
        if let Some(bad) = g.members.iter().find(|m| !number_ok(m)) {
            return Err((key("members"), format!("{bad:?} is not an extension number")));
        }
        if let Some(to) = &g.no_answer
            && !number_ok(to)
        {
            return Err((key("no_answer"), format!("{to:?} is not an extension number")));
        }
        let (low, high) = (*GROUP_RING_S.start(), *GROUP_RING_S.end());
        for (field, value) in [("member_timeout_s", g.member_timeout_s), ("no_answer_after_s", g.no_answer_after_s)] {
            if let Some(v) = value
                && !GROUP_RING_S.contains(&v)
            {
                return Err((key(field), format!("{v} is not between {low} and {high}")));
            }
        }
        let group = Group {
            number: g.number.clone(),
            name: g.name.clone(),
            strategy: g.strategy,
            members: g.members.clone(),
            member_timeout_s: g.member_timeout_s.unwrap_or(GROUP_RING_S_DEFAULT),
            no_answer: g.no_answer.clone(),
            no_answer_after_s: g.no_answer_after_s.unwrap_or(GROUP_RING_S_DEFAULT),
        };
        groups.insert(g.number.clone(), group);
    }
    Ok(groups)
}

/// Checks `[[conferences]]`; an error names the key.
fn conferences(
    decls: &[ConferenceDecl],
    extensions: &[ExtensionDecl],
    emergency: &[String],
) -> Result<Vec<pbx_actors::conference::actor::RoomDecl>, (String, String)> {
    use pbx_actors::conference::room::{PIN_DIGITS_MAX, RoomConfig};
    if decls.len() > CONFIG_CONFERENCES_MAX {
        return Err(("conferences".into(), format!("more than {CONFIG_CONFERENCES_MAX} entries")));
    }
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let mut rooms = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, c) in decls.iter().enumerate() {
        let key = |field: &str| format!("conferences[{i}].{field}");
        if !digits(&c.number) || c.number.len() > 32 {
            return Err((key("number"), format!("{:?} is not a number of 1–32 digits", c.number)));
        }
        if !seen.insert(c.number.as_str()) {
            return Err((key("number"), format!("{:?} is declared twice", c.number)));
        }
        if extensions.iter().any(|e| e.number == c.number) {
            return Err((key("number"), format!("{:?} is also an extension", c.number)));
        }
        if emergency.contains(&c.number) {
            return Err((key("number"), format!("{:?} is an emergency number", c.number)));
        }
        for (field, pin) in [("pin", &c.pin), ("moderator_pin", &c.moderator_pin)] {
            if let Some(pin) = pin
                && (!digits(pin) || pin.len() > PIN_DIGITS_MAX)
            {
                return Err((
                    key(field),
                    format!("must be 1–{PIN_DIGITS_MAX} digits (leave the key out for a room without one)"),
                ));
            }
        }
        if c.pin.is_some() && c.pin == c.moderator_pin {
            return Err((key("moderator_pin"), "must differ from pin".into()));
        }
        let max_participants = c.max_participants.unwrap_or(DEFAULT_CONFERENCE_MAX_PARTICIPANTS);
        let most = pbx_actors::media::mixer::PARTICIPANTS_MAX;
        if !(1..=most).contains(&max_participants) {
            return Err((key("max_participants"), format!("{max_participants} is not between 1 and {most}")));
        }
        rooms.push(pbx_actors::conference::actor::RoomDecl {
            number: c.number.clone(),
            name: c.name.clone(),
            config: RoomConfig { pin: c.pin.clone(), moderator_pin: c.moderator_pin.clone(), max_participants },
        });
    }
    Ok(rooms)
}

/// Checks the `[privacy]` section; an error names the key.
fn privacy_config(p: PrivacySection, cdr_days: u32) -> Result<PrivacyConfig, (&'static str, String)> {
    let d = pbx_actors::privacy::reaper::Periods::default();
    let c = PrivacyConfig {
        reaper_interval_s: p.reaper_interval_s.unwrap_or(DEFAULT_REAPER_INTERVAL_S),
        reaper_batch: p.reaper_batch.unwrap_or(DEFAULT_REAPER_BATCH),
        periods: pbx_actors::privacy::reaper::Periods {
            request_log_anonymise_days: p.request_log_anonymise_days.unwrap_or(d.request_log_anonymise_days),
            request_log_delete_days: p.request_log_delete_days.unwrap_or(d.request_log_delete_days),
            cdr_days,
            audit_days: p.audit_retention_days.unwrap_or(d.audit_days),
            push_days: p.push_record_retention_days.unwrap_or(d.push_days),
            ..d
        },
        operator: p.operator,
    };
    for (key, value, (low, high)) in [
        ("privacy.reaper_interval_s", c.reaper_interval_s, (1, 86_400)),
        ("privacy.reaper_batch", c.reaper_batch, (1, 100_000)),
        ("privacy.request_log_anonymise_days", c.periods.request_log_anonymise_days, (1, 365)),
        ("privacy.request_log_delete_days", c.periods.request_log_delete_days, (1, 3_650)),
        ("privacy.audit_retention_days", c.periods.audit_days, (1, 3_650)),
        ("privacy.push_record_retention_days", c.periods.push_days, (1, 3_650)),
    ] {
        if !(low..=high).contains(&value) {
            return Err((key, format!("{value} is not between {low} and {high}")));
        }
    }
    if c.periods.request_log_delete_days < c.periods.request_log_anonymise_days {
        return Err((
            "privacy.request_log_delete_days",
            "must not be below privacy.request_log_anonymise_days (an entry is anonymised before it goes)".into(),
        ));
    }
    Ok(c)
}

/// Checks the `[licence]` section; an error names the key.
fn licence_config(l: LicenceSection) -> Result<LicenceConfig, (&'static str, String)> {
    if let Some(serial) = &l.serial
        && !valid_serial(serial)
    {
        return Err(("licence.serial", format!("{serial:?} must be 1–64 characters of A-Z a-z 0-9 . _ -")));
    }
    let service = match (l.server_url, l.public_key) {
        (None, None) => None,
        (Some(_), None) => return Err(("licence.public_key", "needed with licence.server_url".into())),
        (None, Some(_)) => return Err(("licence.server_url", "needed with licence.public_key".into())),
        (Some(url), Some(key)) => {
            let public_key = pbx_actors::licence::PublicKey::from_hex(&key).map_err(|e| ("licence.public_key", e))?;
            check_service_url(&url).map_err(|e| ("licence.server_url", e))?;
            Some(LicenceService { url: url.trim_end_matches('/').to_owned(), public_key, server_ca: l.server_ca })
        }
    };
    let c = LicenceConfig {
        serial: l.serial,
        service,
        check_interval_h: l.check_interval_h.unwrap_or(DEFAULT_LICENCE_CHECK_INTERVAL_H),
        retry_interval_h: l.retry_interval_h.unwrap_or(DEFAULT_LICENCE_RETRY_INTERVAL_H),
        grace_days: l.grace_days.unwrap_or(DEFAULT_LICENCE_GRACE_DAYS),
        voucher_interval_h: l.voucher_interval_h.unwrap_or(DEFAULT_VOUCHER_INTERVAL_H),
    };
    for (key, value, (low, high)) in [
        ("licence.check_interval_h", c.check_interval_h, (1, 168)),
        ("licence.retry_interval_h", c.retry_interval_h, (1, 24)),
        ("licence.grace_days", c.grace_days, (1, 365)),
        ("licence.voucher_interval_h", c.voucher_interval_h, (1, 168)),
    ] {
        if !(low..=high).contains(&value) {
            return Err((key, format!("{value} is not between {low} and {high}")));
        }
    }
    if c.retry_interval_h > c.check_interval_h {
        return Err(("licence.retry_interval_h", "must not exceed licence.check_interval_h".into()));
    }
    Ok(c)
}

/// A serial number as the licence service accepts it.
pub fn valid_serial(serial: &str) -> bool {
    (1..=64).contains(&serial.len())
        && serial.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `https://…`, or `http://` to a loopback address only: a licence travels in the clear
/// nowhere but inside this machine.
fn check_service_url(url: &str) -> Result<(), String> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| format!("{url:?} is not a URL"))?;
    let authority = rest.split('/').next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.split(':').next().unwrap_or(""),
    };
    if host.is_empty() {
        return Err(format!("{url:?} names no host"));
    }
    match scheme {
        "https" => Ok(()),
        "http" if host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()) => Ok(()),
        "http" => Err(format!("{url:?}: plain http only to a loopback address; use https")),
        _ => Err(format!("{url:?}: the scheme must be https")),
    }
}

/// An address phones can send media to: not a wildcard, not multicast.
fn parse_media_address(s: &str) -> Result<IpAddr, String> {
    let ip: IpAddr = s.parse().map_err(|_| format!("{s:?} is not an IP address"))?;
    if ip.is_unspecified() || ip.is_multicast() {
        return Err(format!("{s:?} cannot be sent to; give the address phones reach this node at"));
    }
    Ok(ip)
}

fn read_text(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map_err(|e| ConfigError::Read { file: path.display().to_string(), reason: e.to_string() })
}

fn parse_file(file: &str, text: &str) -> Result<FileConfig, ConfigError> {
    let file = file.to_owned();
    let de = toml::Deserializer::parse(text).map_err(|e| ConfigError::Invalid {
        file: file.clone(),
        key: "(syntax)".into(),
        reason: one_line(&e),
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let key = if key == "." { "(top level)".to_string() } else { key };
        ConfigError::Invalid { file, key, reason: one_line(e.inner()) }
    })
}

fn one_line(e: &dyn std::fmt::Display) -> String {
    e.to_string().lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pbx.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(&Flags { config: Some(path), ..Flags::default() })
    }

    /// Defaults are the ones the issue and README promise.
    #[test]
    fn defaults() {
        let c = Config::load(&Flags::default()).unwrap();
        assert_eq!(c.sip_listen, "0.0.0.0:5060".parse().unwrap());
        assert_eq!(c.http_listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.rtp_ports, PortRange { low: 20000, high: 29999 });
        assert_eq!(c.data_dir, PathBuf::from("./pbx-data"));
        let calls = CallsConfig {
            media_encryption: MediaEncryption::Optional,
            no_answer_timeout_s: 30,
            rtp_timeout_s: 60,
            media_address: "127.0.0.1".parse().unwrap(),
            media_io: MediaIo::Auto,
            cdr_retention_days: 90,
            emergency_numbers: vec!["110".into(), "112".into(), "911".into()],
            park_orbits: (701..=720).map(|n: u32| n.to_string()).collect(),
            park_timeout_s: 45,
        };
        assert_eq!(c.calls, calls, "0.0.0.0 cannot go into SDP, so media defaults to loopback");
        assert_eq!(c.registrar.park_orbits.len(), 20);
        let privacy = &c.privacy;
        assert_eq!((privacy.reaper_interval_s, privacy.reaper_batch), (3_600, 500));
        assert_eq!(privacy.periods, pbx_actors::privacy::reaper::Periods::default(), "the inventory's periods");
        assert_eq!(privacy.operator, OperatorSection::default());
    }

    /// Park orbits: a range, "off", a bad range named by its key; a declared number inside the
    /// default range drops that orbit, inside a range set explicitly is an error.
    #[test]
    fn park_orbits_are_a_range_of_numbers_of_their_own() {
        let c = load_text("[calls]\npark_orbits = \"0801-0803\"\npark_timeout_s = 20").unwrap();
        assert_eq!(
            (c.calls.park_orbits.clone(), c.calls.park_timeout_s),
            (vec!["0801".into(), "0802".into(), "0803".into()], 20)
        );
        assert!(load_text("[calls]\npark_orbits = \"off\"").unwrap().registrar.park_orbits.is_empty());
        for (text, reason) in [
            ("[calls]\npark_orbits = \"720-701\"", "upwards"),
            ("[calls]\npark_orbits = \"701\"", "not \"off\""),
            ("[calls]\npark_orbits = \"1-1000\"", "not \"off\""),
            ("[calls]\npark_timeout_s = 5", "not between 10 and 600"),
        ] {
            let error = load_text(text).unwrap_err().to_string();
            assert!(error.contains("calls.park") && error.contains(reason), "{text}: {error}");
        }
        let ext = "[[extensions]]\nnumber = \"705\"\npassword = \"secret-705-long\"\n";
        let c = load_text(ext).unwrap();
        assert!(!c.calls.park_orbits.contains(&"705".to_string()) && c.calls.park_orbits.len() == 19);
        let error = load_text(&format!("{ext}[calls]\npark_orbits = \"701-710\"")).unwrap_err().to_string();
        assert!(error.contains("calls.park_orbits") && error.contains("\"705\""), "{error}");
    }

    /// The privacy section sets the reaper and the periods; the CDR period is the calls key.
    #[test]
    fn privacy_section() {
        let c = load_text(
            "[calls]\ncdr_retention_days = 30\n[privacy]\nreaper_interval_s = 60\nrequest_log_anonymise_days = 7\n\
             [privacy.operator]\nname = \"Example GmbH\"\nemail = \"privacy@example.com\"",
        )
        .unwrap();
        assert_eq!((c.privacy.reaper_interval_s, c.privacy.periods.cdr_days), (60, 30));
        assert_eq!((c.privacy.periods.request_log_anonymise_days, c.privacy.periods.request_log_delete_days), (7, 90));
        assert_eq!(
            (c.privacy.operator.name.as_str(), c.privacy.operator.email.as_str()),
            ("Example GmbH", "privacy@example.com")
        );
    }

    /// The licence section: none means unlicensed; a URL needs a key; http only on loopback.
    #[test]
    fn licence_section() {
        let c = Config::load(&Flags::default()).unwrap();
        assert_eq!(c.licence.service, None);
        assert_eq!((c.licence.check_interval_h, c.licence.retry_interval_h, c.licence.grace_days), (24, 1, 14));
        let key = "11".repeat(32);
        let c = load_text(&format!(
            "[licence]\nserver_url = \"https://lic.example:8443/\"\npublic_key = \"{key}\"\ngrace_days = 3"
        ))
        .unwrap();
        let service = c.licence.service.unwrap();
        assert_eq!(service.url, "https://lic.example:8443");
        assert_eq!(c.licence.grace_days, 3);
        let ok = load_text(&format!("[licence]\nserver_url = \"http://127.0.0.1:9000\"\npublic_key = \"{key}\""));
        assert!(ok.is_ok(), "{ok:?}");
        for (text, key_named) in [
            (
                format!("[licence]\nserver_url = \"http://192.0.2.1:9000\"\npublic_key = \"{key}\""),
                "licence.server_url",
            ),
            ("[licence]\nserver_url = \"https://x\"".to_string(), "licence.public_key"),
            (
                format!("[licence]\nserver_url = \"https://x\"\npublic_key = \"{}\"", "1".repeat(10)),
                "licence.public_key",
            ),
            ("[licence]\ngrace_days = 0".to_string(), "licence.grace_days"),
            ("[licence]\nserial = \"a b\"".to_string(), "licence.serial"),
            ("[calls]\nemergency_numbers = [\"11a\"]".to_string(), "calls.emergency_numbers"),
        ] {
            let err = load_text(&text).unwrap_err().to_string();
            assert!(err.contains(key_named), "{text}: {err}");
        }
    }

    /// The shipped example is a valid config, so its documentation cannot drift into fiction.
    #[test]
    fn example_file_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pbx.example.toml");
        let c = Config::load(&Flags { config: Some(path), ..Flags::default() }).unwrap();
        assert_eq!((c.calls.no_answer_timeout_s, c.calls.cdr_retention_days), (30, 90));
        assert_eq!(c.calls.media_io, MediaIo::Auto);
        assert_eq!(c.extensions.len(), 2);
    }

    /// The media address follows a specific SIP listen address, and file and flag can set it.
    #[test]
    fn media_address_sources() {
        let flags = Flags { sip_listen: Some("192.0.2.5:5060".into()), ..Flags::default() };
        assert_eq!(Config::load(&flags).unwrap().calls.media_address, "192.0.2.5".parse::<IpAddr>().unwrap());
        let c = load_text("[calls]\nmedia_address = \"2001:db8::7\"\nno_answer_timeout_s = 600").unwrap();
        assert_eq!(c.calls.media_address, "2001:db8::7".parse::<IpAddr>().unwrap());
        assert_eq!(c.calls.no_answer_timeout_s, 600);
        let flags = Flags { media_address: Some("198.51.100.1".into()), ..Flags::default() };
        assert_eq!(Config::load(&flags).unwrap().calls.media_address, "198.51.100.1".parse::<IpAddr>().unwrap());
        let flags = Flags { media_address: Some("0.0.0.0".into()), ..Flags::default() };
        let err = Config::load(&flags).unwrap_err().to_string();
        assert!(err.contains("--media-address") && err.contains("cannot be sent to"), "{err}");
    }

    /// A file sets values and extensions; a flag beats the file.
    #[test]
    fn file_and_flags() {
        let text = "sip_listen = \"127.0.0.1:5070\"\n[registrar]\nmin_expires_s = 5\nuser_auth_failures_max = 7\nallow_rfc2069 = true\n\n[[extensions]]\nnumber = \"100\"\npassword = \"secret100\"\ndisplay_name = \"Reception\"\n";
        let c = load_text(text).unwrap();
        assert_eq!(c.sip_listen.port(), 5070);
        assert_eq!(c.registrar.min_expires_s, 5);
        assert_eq!(c.sip.source_limit, SourceLimit::default(), "no [sip]: the defaults");
        assert_eq!(load_text("[sip]\nsource_rate_per_s = 0").unwrap().sip.source_limit.rate_per_s, 0);
        assert_eq!(c.sip.endpoint_shards, None, "no [sip]: one shard per core");
        assert_eq!(load_text("[sip]\nendpoint_shards = 2").unwrap().sip.endpoint_shards(), 2);
        assert_eq!((c.registrar.user_auth_failures_max, c.registrar.allow_rfc2069), (7, true));
        let defaults = load_text("").unwrap().registrar;
        assert_eq!(
            (defaults.auth_failures_max, defaults.user_auth_failures_max, defaults.allow_rfc2069),
            (5, 20, false)
        );
        assert_eq!(c.extensions[0].display_name, "Reception");
        assert!(!format!("{:?}", c.extensions).contains("secret100"), "passwords never in Debug");
    }

    /// SIP over TLS: on by default on the SIP IP and port 5061 with the self-signed pair in the
    /// data directory; `off` turns it off; the operator's certificate needs its key (and the
    /// other way round); it cannot share the SIP TCP port.
    #[test]
    fn sip_over_tls_defaults_and_refusals() {
        let c = load_text("sip_listen = \"192.0.2.5:5070\"").unwrap();
        let tls = c.sip_tls.expect("on by default");
        assert_eq!(tls.listen, "192.0.2.5:5061".parse().unwrap());
        assert!(tls.self_signed);
        assert_eq!(tls.certificate, c.data_dir.join(SIP_TLS_CERT_FILE));
        assert_eq!(tls.key, c.data_dir.join(SIP_TLS_KEY_FILE));
        assert_eq!(load_text("sip_tls_listen = \"off\"").unwrap().sip_tls, None);
        let flags = Flags { sip_tls_listen: Some("off".into()), ..Flags::default() };
        assert_eq!(Config::load(&flags).unwrap().sip_tls, None);
        let given = load_text("[sip]\ntls_certificate = \"/etc/pbx/c.pem\"\ntls_key = \"/etc/pbx/k.pem\"").unwrap();
        let tls = given.sip_tls.unwrap();
        assert_eq!((tls.certificate.to_str(), tls.self_signed), (Some("/etc/pbx/c.pem"), false));
        for (text, key) in [
            ("[sip]\ntls_certificate = \"/c.pem\"", "sip.tls_key"),
            ("[sip]\ntls_key = \"/k.pem\"", "sip.tls_certificate"),
            ("sip_listen = \"127.0.0.1:5061\"", "sip_tls_listen"),
            ("sip_tls_listen = \"nowhere\"", "sip_tls_listen"),
        ] {
            let error = load_text(text).unwrap_err().to_string();
            assert!(error.contains(key), "{text}: {error}");
        }
    }

    /// `[proxy]`: off by default; on, its link address is checked and named when wrong.
    #[test]
    fn the_proxy_section_is_checked() {
        assert_eq!(load_text("").unwrap().proxy, None);
        let on = load_text("[proxy]\nlink = \"192.0.2.7:5070\"\nidentity = \"/etc/pbx/proxy\"").unwrap();
        let proxy = on.proxy.expect("on");
        assert_eq!(proxy.link, "192.0.2.7:5070".parse().unwrap());
        let bad = load_text("[proxy]\nlink = \"proxy.example\"\nidentity = \"/x\"").unwrap_err().to_string();
        assert!(bad.contains("proxy.link") && bad.contains("not an IP:port"), "{bad}");
        let unknown =
            load_text("[proxy]\nlink = \"192.0.2.7:5070\"\nidentity = \"/x\"\nport = 1").unwrap_err().to_string();
        assert!(unknown.contains("port"), "{unknown}");
    }

    /// `[push]`: off without a provider; with one, its providers reach the registrar; a wait out
    /// of range or a URL that is not https is refused naming the key.
    #[test]
    fn push_is_off_by_default_and_checked_when_on() {
        let c = load_text("").unwrap();
        assert_eq!((c.push, c.registrar.push_providers.len()), (None, 0));
        let c = load_text("[push]\n[push.fcm]\nservice_account = \"/etc/pbx/sa.json\"").unwrap();
        let push = c.push.expect("on");
        assert_eq!((push.wait_s, push.providers()), (DEFAULT_PUSH_WAIT_S, vec!["fcm".to_string()]));
        assert_eq!(c.registrar.push_providers, ["fcm"]);
        assert_eq!(c.registrar.push_refresh_before_s, DEFAULT_PUSH_REFRESH_BEFORE_S);
        let apns = "[push.apns]\nkey = \"/k.p8\"\nkey_id = \"K\"\nteam_id = \"T\"";
        assert_eq!(load_text(apns).unwrap().registrar.push_providers, ["apns", "apns.dev"]);
        for (text, key) in [
            ("[push]\nwait_s = 0\n[push.fcm]\nservice_account = \"/s\"", "push.wait_s"),
            ("[push]\nrefresh_before_s = 5\n[push.fcm]\nservice_account = \"/s\"", "push.refresh_before_s"),
            ("[push.fcm]\nservice_account = \"/s\"\nurl = \"http://fcm\"", "push.fcm.url"),
            ("[push.apns]\nkey = \"/k\"\nkey_id = \"\"\nteam_id = \"T\"", "push.apns"),
        ] {
            let error = load_text(text).unwrap_err().to_string();
            assert!(error.contains(key), "{text}: {error}");
        }
    }

    /// Errors name the file, the key and the reason.
    #[test]
    fn errors_name_file_key_and_reason() {
        for (text, key, why) in [
            ("sip_listen = \"nonsense\"", "sip_listen", "not ADDR:PORT"),
            ("[registrar]\nmin_expires_s = \"x\"", "registrar.min_expires_s", "invalid type"),
            ("[registrar]\nmin_expire = 5", "registrar", "unknown field"),
            ("[sip]\nsource_rate_per_s = 2000000", "sip.source_rate_per_s", "at most"),
            ("[sip]\nsource_rate_per_s = 10\nsource_burst = 0", "sip.source_burst", "must be 1"),
            ("[sip]\nendpoint_shards = 0", "sip.endpoint_shards", "must be 1"),
            ("[sip]\nendpoint_shards = 17", "sip.endpoint_shards", "must be 1"),
            ("[sip]\nsource_rate = 10", "sip", "unknown field"),
            ("rtp_ports = \"2000-1000\"", "rtp_ports", "LOW < HIGH"),
            (
                "[[extensions]]\nnumber = \"1\"\npassword = \"p\"\n[[extensions]]\nnumber = \"1\"\npassword = \"q\"",
                "extensions[1].number",
                "twice",
            ),
            ("[[extensions]]\nnumber = \"1\"", "extensions[0]", "missing field `password`"),
            ("[registrar]\ndigest_algorithms = [\"SHA-1\"]", "registrar.digest_algorithms", "not one of"),
            ("[registrar]\nauth_failures_max = 0", "registrar.auth_failures_max", "0 is not between 1 and 100"),
            ("[registrar]\nauth_failures_max = 101", "registrar.auth_failures_max", "not between 1 and 100"),
            ("[registrar]\nuser_auth_failures_max = 0", "registrar.user_auth_failures_max", "not between 1 and 100"),
            ("[registrar]\nuser_auth_failures_max = 500", "registrar.user_auth_failures_max", "not between 1 and 100"),
            ("[registrar]\nauth_failure_window_s = 0", "registrar.auth_failure_window_s", "not between 1 and 86400"),
            ("[registrar]\nblock_s = 0", "registrar.block_s", "not between 1 and 86400"),
            ("[registrar]\nblock_s = 86401", "registrar.block_s", "not between 1 and 86400"),
            ("[registrar]\nallow_rfc2069 = \"yes\"", "registrar.allow_rfc2069", "invalid type"),
            ("[calls]\nno_answer_timeout_s = 0", "calls.no_answer_timeout_s", "0 is not between 1 and 600"),
            ("[calls]\nno_answer_timeout_s = 601", "calls.no_answer_timeout_s", "not between 1 and 600"),
            ("[calls]\nno_answer_timeout_s = -1", "calls.no_answer_timeout_s", "invalid value"),
            ("[calls]\nrtp_timeout_s = 4", "calls.rtp_timeout_s", "not between 5 and 3600"),
            ("[calls]\nrtp_timeout_s = 3601", "calls.rtp_timeout_s", "not between 5 and 3600"),
            ("[calls]\ncdr_retention_days = 0", "calls.cdr_retention_days", "not between 1 and 3650"),
            ("[calls]\ncdr_retention_days = 3651", "calls.cdr_retention_days", "not between 1 and 3650"),
            ("[calls]\nmedia_address = \"pbx.example\"", "calls.media_address", "not an IP address"),
            ("[calls]\nmedia_io = \"uring\"", "calls.media_io", "unknown variant"),
            ("[calls]\nmedia_address = \"::\"", "calls.media_address", "cannot be sent to"),
            ("[calls]\nmedia_address = \"224.0.0.1\"", "calls.media_address", "cannot be sent to"),
            ("[calls]\nrtp_timeout = 5", "calls", "unknown field"),
            ("[[groups]]\nnumber = \"600\"\nmembers = []", "groups[0].members", "1–32 extensions"),
            ("[[groups]]\nnumber = \"6x\"\nmembers = [\"101\"]", "groups[0].number", "not a number"),
            ("[[groups]]\nnumber = \"600\"\nmembers = [\"1 1\"]", "groups[0].members", "not an extension number"),
            (
                "[[groups]]\nnumber = \"600\"\nmembers = [\"101\"]\nmember_timeout_s = 0",
                "groups[0].member_timeout_s",
                "not between 1 and 300",
            ),
            (
                "[[groups]]\nnumber = \"600\"\nmembers = [\"101\"]\nstrategy = \"random\"",
                "groups[0].strategy",
                "unknown variant",
            ),
            (
                "[[conferences]]\nnumber = \"600\"\n[[groups]]\nnumber = \"600\"\nmembers = [\"101\"]",
                "groups[0].number",
                "conference room",
            ),
            ("[privacy]\nreaper_interval_s = 0", "privacy.reaper_interval_s", "not between 1 and 86400"),
            ("[privacy]\nrequest_log_anonymise_days = 0", "privacy.request_log_anonymise_days", "not between"),
            (
                "[privacy]\nrequest_log_anonymise_days = 30\nrequest_log_delete_days = 20",
                "privacy.request_log_delete_days",
                "must not be below",
            ),
            ("[privacy]\naudit_retention_days = 4000", "privacy.audit_retention_days", "not between 1 and 3650"),
            ("[privacy.operator]\nnmae = \"x\"", "privacy.operator", "unknown field"),
        ] {
            let err = load_text(text).unwrap_err().to_string();
            assert!(err.contains("pbx.toml"), "{err}");
            assert!(err.contains(key), "{err} should name {key}");
            assert!(err.contains(why), "{err} should say {why}");
        }
    }
}

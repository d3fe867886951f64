//! The data inventory: every kind of personal data pbx keeps, with its purpose, legal basis,
//! retention, where it is stored and whose it is (GDPR Art. 30 record of processing; seed: the
//! privacy policy in `shared/seed/`).
//!
//! Each subsystem declares its categories here in the same change that introduces the data.
//! The retention reaper ([`reaper`]), the subject-rights API (the node) and the generated
//! privacy notice ([`notice`]) read this table; a node test checks that every redb table is
//! declared, a notice test that every category appears in every language.

pub mod actor;
pub mod notice;
pub mod reaper;

use crate::Timestamp;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// How long a category is kept, as code enforces it. Periods are the defaults; the node's
/// config may change them (`config` names the key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retention {
    /// Until the data subject's record is deleted (e.g. the extension is removed) or erased.
    UntilDeleted,
    /// Until the binding expires or is removed; at most `registrar.max_expires_s`. The reaper
    /// deletes a stored binding its registrar missed one reaper interval after it expired.
    UntilExpiry,
    /// Only in memory, for at most this many seconds (configurable; the default given).
    MemorySeconds(u32),
    /// Only in memory, while the call lasts (and at most the call's ending bound after it).
    CallDuration,
    /// Stored, then deleted this many days after `from` by the retention reaper.
    Delete { days: u32, from: &'static str, config: &'static str },
    /// Stored; anonymised (IP addresses truncated, numbers and names masked) `days` after
    /// `from`, and the anonymised record deleted `deleted_after_days` after it.
    AnonymiseThenDelete { days: u32, deleted_after_days: u32, from: &'static str, config: &'static str },
    /// A copy of changes to other categories, kept until the next compaction: at most `hours`
    /// after the change, and seconds after an erasure.
    UntilCompaction { hours: u32 },
    /// Kept as long as the node's data: what keeps an erasure from being undone.
    WhileTheErasureHolds,
}

/// Whose data a category holds: what a subject-rights request names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectKind {
    /// An extension (its user): number, name, its phones.
    Extension,
    /// A telephone number, also one that is not an extension (a dialled number).
    PhoneNumber,
    /// An IP address (of a phone, or of whoever sent a request).
    IpAddress,
}

/// The GDPR Art. 6(1) basis of a processing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LegalBasis {
    /// Art. 6(1)(b): performing the contract (providing the telephone service).
    Contract,
    /// Art. 6(1)(c): a legal obligation (accountability, Art. 5(2) and 30).
    LegalObligation,
    /// Art. 6(1)(f): a legitimate interest, named. Open to objection (Art. 21).
    LegitimateInterest(&'static str),
}

impl LegalBasis {
    /// The article, as the notice and the API print it.
    pub fn article(self) -> &'static str {
        match self {
            LegalBasis::Contract => "Art. 6(1)(b)",
            LegalBasis::LegalObligation => "Art. 6(1)(c)",
            LegalBasis::LegitimateInterest(_) => "Art. 6(1)(f)",
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct DataCategory {
    /// Stable identifier, used by the reaper, the subject-rights API, the notice and the audit.
    pub id: &'static str,
    pub data: &'static str,
    pub purpose: &'static str,
    /// GDPR Art. 6(1) bases; more than one when purposes differ (say which in `purpose`).
    pub legal_basis: &'static [LegalBasis],
    pub retention: Retention,
    /// Where it lives: `redb:<table>` (the node's `pbx.redb`), `licence-server:<table>`,
    /// `proxy:<table>` (the softphone proxy's `proxy.redb`), `proxy:memory` (the proxy's
    /// memory), `memory`, or `log` (the node's log output, kept by the operator's log system).
    pub stored_in: &'static [&'static str],
    /// Whose it is.
    pub subjects: &'static [SubjectKind],
}

/// Every category pbx keeps today.
pub const INVENTORY: &[DataCategory] = &[
    DataCategory {
        id: "extension",
        data: "extension number, display name, digest hashes H(user:realm:password) for MD5 and SHA-256 (never the password); its call forwarding: the extensions its calls go to (always, on busy, on no answer) and after how many seconds; the ring groups it is logged out of",
        purpose: "authenticate the extension's phones, show its name, and route its calls where its user asked",
        legal_basis: &[LegalBasis::Contract],
        retention: Retention::UntilDeleted,
        stored_in: &["redb:extensions", "redb:call_forwarding", "redb:group_logouts", "memory"],
        subjects: &[SubjectKind::Extension],
    },
    DataCategory {
        id: "registration",
        data: "extension number, contact URI (IP address and port), source address, transport, Call-ID, CSeq, user agent",
        purpose: "deliver calls to the phones where they are registered",
        legal_basis: &[LegalBasis::Contract],
        retention: Retention::UntilExpiry,
        stored_in: &["redb:bindings", "memory"],
        subjects: &[SubjectKind::Extension, SubjectKind::IpAddress],
    },
    DataCategory {
        id: "auth-failure",
        data: "source IP address (IPv6: its /64) and claimed user name of failed authentications, while the source or user is watched or blocked; the IP address and port each extension last authenticated from, so that blocks spare its phones",
        purpose: "block password guessing (security of the service)",
        legal_basis: &[LegalBasis::LegitimateInterest("security of the service, Art. 32")],
        // Failures: the failure window or the block, whichever is longer (defaults 60 s /
        // 300 s). The last successful address: `registrar.max_expires_s` (default 3600 s).
        retention: Retention::MemorySeconds(3600),
        stored_in: &["memory", "log"],
        subjects: &[SubjectKind::IpAddress, SubjectKind::Extension],
    },
    DataCategory {
        id: "security-log",
        data: "time, source IP address and claimed user name of each failed authentication and each block; under a flood, one entry per minute, event kind and network (/24, /64) with a count",
        purpose: "investigate attacks on the exchange after the fact (the PBX's request log)",
        legal_basis: &[LegalBasis::LegitimateInterest("security of the service, Art. 32")],
        // The seed's period for request logs: anonymised after 14 days. Deleted after 90.
        // At most 24,480 entries per event kind and day (`pbx_node::storage::
        // SECURITY_ROWS_PER_KIND_PER_DAY_MAX`, docs/PRIVACY.md).
        retention: Retention::AnonymiseThenDelete {
            days: 14,
            deleted_after_days: 90,
            from: "the event",
            config: "privacy.request_log_anonymise_days, privacy.request_log_delete_days",
        },
        stored_in: &["redb:security_log"],
        subjects: &[SubjectKind::IpAddress, SubjectKind::Extension],
    },
    DataCategory {
        id: "cdr",
        data: "caller and callee extension numbers (callee: the dialled number), call start, answer and end times, outcome, who hung up, SIP Call-ID, codecs, media statistics (packets, bytes, loss, jitter); for a transferred call, who transferred it to which number and the link between its records",
        purpose: "billing and the call history users see (contract); troubleshooting and call statistics (legitimate interest)",
        legal_basis: &[
            LegalBasis::Contract,
            LegalBasis::LegitimateInterest("troubleshooting the service and call statistics"),
        ],
        // Long enough to query a bill, short by default.
        retention: Retention::Delete { days: 90, from: "the end of the call", config: "calls.cdr_retention_days" },
        stored_in: &["redb:cdrs"],
        subjects: &[SubjectKind::Extension, SubjectKind::PhoneNumber, SubjectKind::IpAddress],
    },
    DataCategory {
        id: "conference-participation",
        data: "conference room number, the participant's extension, when its call reached the room, when it came in (after the PIN) and when it left; never the audio (rooms record nothing)",
        purpose: "the history of a conference (who took part, when) for billing and the users' call history, as for call detail records",
        legal_basis: &[LegalBasis::Contract],
        // Like the call detail record of the same call (its period and key).
        retention: Retention::Delete {
            days: 90,
            from: "when the participant left the room",
            config: "calls.cdr_retention_days",
        },
        stored_in: &["redb:conference_participations"],
        subjects: &[SubjectKind::Extension],
    },
    DataCategory {
        id: "push-records",
        data: "for each push sent to wake a mobile softphone (for a call, or to renew its registration before it runs out): when, the user name of the woken phone (the callee's extension), the caller's and the callee's numbers (no caller for a renewal), the push service (FCM or APNs), the push token or device ID the app registered with, the app's IP address and port when it last registered, and the outcome (delivered, token no longer valid, failed); to send it, the token and a wake-up message go to Google's or Apple's push service (see “What leaves the PBX”)",
        purpose: "waking the callee's mobile app through its push provider so it can take a call, or renew its registration so it stays reachable (contract); the record of each push is kept solely for troubleshooting and quality optimisation (legitimate interest)",
        // The seed ("Push Notification Service") gives the purpose of keeping the records,
        // troubleshooting, and no basis; troubleshooting rests on (f) here as for CDRs.
        legal_basis: &[
            LegalBasis::Contract,
            LegalBasis::LegitimateInterest(
                "troubleshooting push notifications and optimising the quality of the service",
            ),
        ],
        // The seed: "stored for up to 7 days".
        retention: Retention::Delete {
            days: 7,
            from: "the push was sent",
            config: "privacy.push_record_retention_days",
        },
        stored_in: &["redb:push_records"],
        subjects: &[SubjectKind::Extension, SubjectKind::IpAddress],
    },
    DataCategory {
        id: "call-in-progress",
        data: "caller and callee numbers and display names, SIP dialog identifiers (Call-ID, tags, contact URIs with IP addresses and ports), SDP media addresses, the RTP source addresses seen; the voice itself is relayed, never stored",
        purpose: "connect the call and carry its media",
        legal_basis: &[LegalBasis::Contract],
        retention: Retention::CallDuration,
        stored_in: &["memory"],
        subjects: &[SubjectKind::Extension, SubjectKind::PhoneNumber, SubjectKind::IpAddress],
    },
    DataCategory {
        id: "privacy-preferences",
        data: "the extension or number that asked for restriction (Art. 18) or objected to statistics (Art. 21), and since when",
        purpose: "honour the restriction or objection",
        legal_basis: &[LegalBasis::LegalObligation],
        retention: Retention::UntilDeleted,
        stored_in: &["redb:privacy_flags"],
        subjects: &[SubjectKind::Extension, SubjectKind::PhoneNumber, SubjectKind::IpAddress],
    },
    DataCategory {
        id: "privacy-audit",
        data: "each retention run (rule, records, cut-off time) and each subject-rights request (right, time, records touched, the subject as a keyed pseudonym: HMAC-SHA-256 with the node's privacy key, never the number or address itself)",
        purpose: "prove that retention and data-subject requests were honoured (accountability)",
        legal_basis: &[LegalBasis::LegalObligation],
        // Three years: the regular limitation period (German Civil Code § 195).
        retention: Retention::Delete { days: 1095, from: "the entry", config: "privacy.audit_retention_days" },
        stored_in: &["redb:privacy_audit"],
        subjects: &[SubjectKind::Extension, SubjectKind::PhoneNumber, SubjectKind::IpAddress],
    },
    DataCategory {
        id: "erasure-tombstone",
        data: "for each erased extension or number, its keyed pseudonym (HMAC-SHA-256 with the node's privacy key, never the number itself) and when it was erased",
        purpose: "keep an erasure effective: an entry of the configuration file that names an erased number is not applied again",
        legal_basis: &[LegalBasis::LegalObligation],
        retention: Retention::WhileTheErasureHolds,
        stored_in: &["redb:erasure_tombstones"],
        subjects: &[SubjectKind::Extension, SubjectKind::PhoneNumber],
    },
    DataCategory {
        id: "cluster-log",
        data: "the durable changes to the categories above (extensions, registrations, call records, conference participations, push records, licence documents, privacy requests with the subject they name), as replicated between the nodes, and a snapshot of them",
        purpose: "keep every node of the PBX (one, on an appliance) consistent and let it recover after a crash",
        legal_basis: &[LegalBasis::Contract, LegalBasis::LegalObligation],
        // `pbx_node::cluster::COMPACTION_INTERVAL` (1 h); an erasure compacts within seconds.
        retention: Retention::UntilCompaction { hours: 1 },
        stored_in: &["raft:raft_log", "raft:raft_meta"],
        subjects: &[SubjectKind::Extension, SubjectKind::PhoneNumber, SubjectKind::IpAddress],
    },
    DataCategory {
        id: "licence-service-log",
        data: "requesting IP address, time, the serial number asked about, the request (licence, unlocks, voucher redemption with a keyed hash of the voucher code, never the code) and its outcome; to limit failed redemptions, in memory only, the network (IPv4 address, IPv6 /64) of a source that failed to redeem, for at most 10 minutes after its last failure by default",
        purpose: "operating the licence and voucher service; detecting abuse (serial or voucher guessing)",
        legal_basis: &[LegalBasis::LegitimateInterest("operating and securing the licence service")],
        // The seed's promise for the vendor's logs: IPs anonymised after 14 days
        // (`licence::desk::ANONYMISE_AFTER_S`); entries deleted after 90 (`LOG_KEEP_S`). The
        // redeem limits' buckets (`licence::desk::RedeemLimits`) are forgotten once full again:
        // `source_burst × source_refill_s` after the last failure (10 × 60 s by default).
        retention: Retention::AnonymiseThenDelete {
            days: 14,
            deleted_after_days: 90,
            from: "the request",
            config: "(fixed in the licence server)",
        },
        stored_in: &["licence-server:licence_log"],
        subjects: &[SubjectKind::IpAddress],
    },
    DataCategory {
        id: "proxy-session",
        data: "for each softphone that reaches the PBX through the operator's softphone proxy (`pbx proxy`): the softphone's current external IP address and port, the PBX's external IP address and port, the PBX's serial number, the softphone's user name, the push token it registered with, if any, and when it was last used; never its password (the proxy only relays the PBX's challenge and the softphone's answer to it)",
        purpose: "connect softphones to the PBX without a VPN, and reach them again for incoming calls",
        legal_basis: &[LegalBasis::Contract],
        // The seed ("Auerproxy Server"): "stored and deleted 12 months after the last use"
        // (`proxy::SESSION_RETENTION_DAYS`, enforced by the proxy's ledger, not the node's reaper).
        retention: Retention::Delete {
            days: 365,
            from: "the session's last use",
            config: "proxy --session-retention-days",
        },
        stored_in: &["proxy:proxy_sessions"],
        subjects: &[SubjectKind::Extension, SubjectKind::IpAddress],
    },
    DataCategory {
        id: "proxy-debug",
        data: "only while the PBX's administrator has switched debug mode on for the PBX (it ends by itself, by default after 4 weeks): the real names of call destinations (the number called and the display name it was called by), with the calling softphone's user name, the PBX's serial number and the time",
        purpose: "troubleshooting calls through the softphone proxy, at the request of the PBX's administrator",
        legal_basis: &[LegalBasis::LegitimateInterest("troubleshooting calls through the softphone proxy")],
        // The seed: debug data "is stored for up to 4 weeks and then automatically deleted"
        // (`proxy::DEBUG_RETENTION_DAYS`).
        retention: Retention::Delete { days: 28, from: "the call", config: "proxy --debug-retention-days" },
        stored_in: &["proxy:proxy_debug"],
        subjects: &[SubjectKind::Extension, SubjectKind::PhoneNumber],
    },
    DataCategory {
        id: "provisioning-cache",
        data: "a softphone's configuration as the PBX hands it to the softphone proxy for the softphone to fetch: the user name, the transport, the PBX's serial number, and (added by the proxy) the address to register with and the pin of the proxy's TLS certificate, kept under a one-time enrolment code; never the password. It is deleted as soon as the softphone has fetched it once",
        purpose: "let a softphone set itself up (client provisioning) without a VPN",
        legal_basis: &[LegalBasis::Contract],
        // The seed: "cached and deleted from the server immediately after forwarding"; one
        // never fetched goes after 24 hours.
        retention: Retention::MemorySeconds(86_400),
        stored_in: &["proxy:memory"],
        subjects: &[SubjectKind::Extension],
    },
];

/// The category with this id, if declared.
pub fn category(id: &str) -> Option<&'static DataCategory> {
    INVENTORY.iter().find(|c| c.id == id)
}

/// The address with its host part zeroed: IPv4 to its /24, IPv6 to its /48 (an IPv4-mapped
/// IPv6 address counts as IPv4).
pub fn anonymise_ip(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::V4(Ipv4Addr::new(a, b, c, 0))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0))
        }
    }
}

/// Whether `ip` is already what [`anonymise_ip`] makes of it.
pub fn is_anonymised_ip(ip: IpAddr) -> bool {
    anonymise_ip(ip) == ip
}

/// Characters [`mask_number`] hides at the end of a number or name.
pub const MASKED_TAIL: usize = 3;

/// A number (or user name) with its last three characters replaced by `x`, as itemised bills
/// shorten numbers: `0301234567` → `0301234xxx`; three characters or fewer become all `x`.
pub fn mask_number(number: &str) -> String {
    let n = number.chars().count();
    number.chars().enumerate().map(|(i, c)| if i + MASKED_TAIL >= n { 'x' } else { c }).collect()
}

/// What an erased party becomes in the records that stay (the other party's CDRs): the
/// anonymous identity of RFC 3323.
pub const ERASED: &str = "anonymous";

/// A data subject as a request names it: an IP address, or a number (an extension is a number).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Subject {
    Number(String),
    Ip(IpAddr),
}

/// Characters a subject id may have at most.
pub const SUBJECT_ID_MAX: usize = 64;

impl Subject {
    /// Reads a subject id: an IPv4 or IPv6 address, else a number or SIP user name
    /// (letters, digits and `+ * # - . _`). The reason names what is wrong.
    pub fn parse(id: &str) -> Result<Subject, String> {
        if let Ok(ip) = id.parse::<IpAddr>() {
            return Ok(Subject::Ip(ip.to_canonical()));
        }
        if id.is_empty() || id.len() > SUBJECT_ID_MAX {
            return Err(format!(
                "a subject is an extension, a number or an IP address of 1 to {SUBJECT_ID_MAX} characters"
            ));
        }
        if let Some(c) = id.chars().find(|c| !(c.is_ascii_alphanumeric() || "+*#-._".contains(*c))) {
            return Err(format!("{c:?} cannot be part of an extension, a number or an IP address"));
        }
        if id == ERASED {
            return Err(format!("{ERASED:?} is what erased parties become, not a subject"));
        }
        Ok(Subject::Number(id.to_string()))
    }

    pub fn id(&self) -> String {
        match self {
            Subject::Number(n) => n.clone(),
            Subject::Ip(ip) => ip.to_string(),
        }
    }
}

/// The data-subject rights pbx serves (GDPR Art. 15–21).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Right {
    /// Art. 15 and 20: one JSON document with everything held.
    Access,
    /// Art. 16.
    Rectification,
    /// Art. 17.
    Erasure,
    /// Art. 18 (and lifting it).
    Restriction,
    RestrictionLifted,
    /// Art. 21 (and withdrawing it).
    Objection,
    ObjectionWithdrawn,
}

impl Right {
    pub fn name(self) -> &'static str {
        match self {
            Right::Access => "access",
            Right::Rectification => "rectification",
            Right::Erasure => "erasure",
            Right::Restriction => "restriction",
            Right::RestrictionLifted => "restriction_lifted",
            Right::Objection => "objection",
            Right::ObjectionWithdrawn => "objection_withdrawn",
        }
    }
}

/// One line of the privacy audit (redb `privacy_audit`): what was done, never the data itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at: Timestamp,
    pub event: AuditEvent,
}

/// Stored with postcard, which has no internally tagged enums: the API shapes its own JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuditEvent {
    /// One run of the retention reaper: each rule it applied, with its cut-off and count.
    Retention { rules: Vec<RuleOutcome>, finished: Timestamp },
    /// A subject-rights request served (or refused: `outcome` says why).
    SubjectRequest {
        right: Right,
        /// HMAC-SHA-256 of the subject id with the node's privacy key, 16 bytes in hex.
        subject: String,
        /// Records read or changed.
        records: u64,
        outcome: String,
    },
}

/// One entry of the node's security log (redb `security_log`, category `security-log`): a
/// failed authentication or a block, as the registrar reported it; or, under a flood, every
/// event of one kind from one network in one interval, counted (the node's writer aggregates,
/// see `pbx_node::storage::SecurityAggregator`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityEntry {
    /// The time of the (first) event.
    pub at: Timestamp,
    /// The address the event came from; after anonymisation, or when the entry stands for
    /// several addresses, only their network (see `source_bits`).
    pub source: IpAddr,
    /// How many leading bits of `source` are meaningful: all (32 or 128) for one address;
    /// [`FLOOD_V4_BITS`] or [`FLOOD_V6_BITS`] when the entry counts events from several
    /// addresses of that network; 0 (`::`) for the events of an interval beyond the per-kind
    /// network bound; at most 24 / 48 once anonymised.
    pub source_bits: u8,
    /// The user name the (first) request claimed; masked by anonymisation, [`ERASED`] by an
    /// erasure.
    pub user: Option<String>,
    /// The (last) event.
    pub event: SecurityEvent,
    pub anonymised: bool,
    /// How many events this entry stands for (at least 1).
    pub count: u32,
}

/// New variants go at the end: stored entries are read back by variant index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SecurityEvent {
    AuthFailed,
    /// The entry's user may not authenticate from the entry's source (an IPv4 address or IPv6
    /// /64) until `until`, except from addresses it recently authenticated from. (Entries
    /// written before issue 14 have no user: the whole source was blocked.)
    Blocked {
        until: Timestamp,
    },
    /// The entry's user failed too often from all sources together and is locked until `until`
    /// except from addresses it recently authenticated from; the source made the last failure.
    UserLocked {
        until: Timestamp,
    },
    /// Every untrusted authentication from the prefix `source/prefix_len` is refused until
    /// `until` (failures were aggregated by prefix because the per-source table was full).
    PrefixBlocked {
        until: Timestamp,
        prefix_len: u8,
    },
}

impl SecurityEvent {
    /// The stable name the API uses.
    pub fn name(self) -> &'static str {
        match self {
            SecurityEvent::AuthFailed => "auth_failed",
            SecurityEvent::Blocked { .. } => "blocked",
            SecurityEvent::UserLocked { .. } => "user_locked",
            SecurityEvent::PrefixBlocked { .. } => "prefix_blocked",
        }
    }

    /// When the block or lock it records ends.
    pub fn until(self) -> Option<Timestamp> {
        match self {
            SecurityEvent::AuthFailed => None,
            SecurityEvent::Blocked { until }
            | SecurityEvent::UserLocked { until }
            | SecurityEvent::PrefixBlocked { until, .. } => Some(until),
        }
    }
}

/// The network a flood is grouped by in the security log: an IPv4 address's /24 (what one
/// customer, one NAT pool or one small hosting block typically holds).
pub const FLOOD_V4_BITS: u8 = 24;
/// An IPv6 address's /64: one subnet, the least any single host is given (RFC 6177), so an
/// attacker rotating through the addresses of its own subnet stays one network.
pub const FLOOD_V6_BITS: u8 = 64;

/// The network `ip` belongs to for flood grouping, and its prefix length: the /24 of an IPv4
/// address, the /64 of an IPv6 one (an IPv4-mapped IPv6 address counts as IPv4).
pub fn flood_network(ip: IpAddr) -> (IpAddr, u8) {
    match ip.to_canonical() {
        IpAddr::V4(v4) => (IpAddr::V4(Ipv4Addr::from_bits(v4.to_bits() & !(u32::MAX >> FLOOD_V4_BITS))), FLOOD_V4_BITS),
        IpAddr::V6(v6) => {
            (IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !(u128::MAX >> FLOOD_V6_BITS))), FLOOD_V6_BITS)
        }
    }
}

/// All bits of an address: 32 for IPv4, 128 for IPv6.
pub fn address_bits(ip: IpAddr) -> u8 {
    if ip.to_canonical().is_ipv4() { 32 } else { 128 }
}

impl SecurityEntry {
    /// One event from one address.
    pub fn new(at: Timestamp, source: IpAddr, user: Option<String>, event: SecurityEvent) -> SecurityEntry {
        let source = source.to_canonical();
        SecurityEntry { at, source, source_bits: address_bits(source), user, event, anonymised: false, count: 1 }
    }

    /// What the retention rule makes of it: source truncated, user masked, marked.
    pub fn anonymise(&mut self) {
        self.source = anonymise_ip(self.source);
        let bits = if self.source.is_ipv4() { 24 } else { 48 };
        self.source_bits = self.source_bits.min(bits);
        self.user = self.user.as_deref().map(mask_number);
        self.anonymised = true;
    }

    /// Adds a later entry of the same kind and interval: the counts add up; the source stays
    /// if both name the same, else becomes their flood network (or `::/0` when they share none);
    /// the first user and time stay; the later event stays (a block's later end). An anonymised
    /// side leaves the sum anonymised.
    pub fn absorb(&mut self, later: &SecurityEntry) {
        self.count = self.count.saturating_add(later.count);
        if (self.source, self.source_bits) != (later.source, later.source_bits) {
            let (network, bits) = flood_network(self.source);
            let both_inside =
                flood_network(later.source) == (network, bits) && self.source_bits >= bits && later.source_bits >= bits;
            (self.source, self.source_bits) =
                if both_inside { (network, bits) } else { (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0) };
        }
        if self.user.is_none() {
            self.user.clone_from(&later.user);
        }
        self.event = later.event;
        if self.anonymised || later.anonymised {
            self.anonymise();
        }
    }
}

/// Where the registrar's shell reports security events. Must not block (the node queues them
/// for a writer thread, dropping beyond a rate bound rather than slowing SIP down).
pub trait SecurityLog: Send + Sync + 'static {
    fn record(&self, entry: SecurityEntry);
}

/// The host of a SIP URI (`sip:1001@192.0.2.7:5060;transport=udp` → `192.0.2.7`), brackets of
/// an IPv6 reference removed; `None` when there is none.
pub fn uri_host(uri: &str) -> Option<&str> {
    let rest = uri.trim_start_matches('<');
    let rest = rest.split_once(':').map_or(rest, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let host = match rest.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => rest.split([':', ';', '>', '?']).next()?,
    };
    (!host.is_empty()).then_some(host)
}

/// What one retention rule did in one run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleOutcome {
    pub category: String,
    pub action: reaper::Action,
    /// Records older than this were due.
    pub cutoff: Timestamp,
    pub records: u64,
    /// Why the rule stopped short (storage failed); the next run goes on.
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids are unique; every category says where it is stored, whose it is and why.
    #[test]
    fn inventory_is_well_formed() {
        for (i, c) in INVENTORY.iter().enumerate() {
            assert!(INVENTORY[..i].iter().all(|o| o.id != c.id), "duplicate id {}", c.id);
            assert!(!c.stored_in.is_empty() && !c.purpose.is_empty() && !c.legal_basis.is_empty(), "{}", c.id);
            assert!(!c.subjects.is_empty() && !c.data.is_empty(), "{}", c.id);
        }
        assert!(category("registration").is_some());
        assert!(category("nonexistent").is_none());
    }

    /// Every rule the reaper applies belongs to a declared category, and the default periods
    /// are the ones the inventory declares (so the notice says what the code does).
    #[test]
    fn reaper_defaults_are_the_declared_periods() {
        let periods = reaper::Periods::default();
        for rule in reaper::rules(&periods) {
            assert!(category(rule.category).is_some(), "rule for undeclared {}", rule.category);
        }
        let days = |id| match category(id).unwrap().retention {
            Retention::Delete { days, .. } => (None, days),
            Retention::AnonymiseThenDelete { days, deleted_after_days, .. } => (Some(days), deleted_after_days),
            other => panic!("{id}: {other:?}"),
        };
        assert_eq!(days("cdr"), (None, periods.cdr_days));
        assert_eq!(days("push-records"), (None, periods.push_days));
        assert_eq!(days("privacy-audit"), (None, periods.audit_days));
        assert_eq!(days("security-log"), (Some(periods.request_log_anonymise_days), periods.request_log_delete_days));
    }

    /// The licence log's declared retention is the one the desk enforces.
    #[test]
    fn licence_log_retention_matches_the_desk() {
        use crate::licence::desk::{ANONYMISE_AFTER_S, LOG_KEEP_S};
        let Retention::AnonymiseThenDelete { days, deleted_after_days, .. } =
            category("licence-service-log").unwrap().retention
        else {
            panic!("licence-service-log must be declared with AnonymiseThenDelete");
        };
        assert_eq!((u64::from(days) * 86_400, u64::from(deleted_after_days) * 86_400), (ANONYMISE_AFTER_S, LOG_KEEP_S));
    }

    /// The proxy's categories declare the periods its ledger enforces by default, and say the
    /// debug mode's default length.
    #[test]
    fn proxy_retention_matches_the_ledger() {
        use crate::proxy::{DEBUG_MODE_DAYS, DEBUG_RETENTION_DAYS, SESSION_RETENTION_DAYS};
        let days = |id| match category(id).unwrap().retention {
            Retention::Delete { days, .. } => days,
            other => panic!("{id}: {other:?}"),
        };
        assert_eq!((days("proxy-session"), days("proxy-debug")), (SESSION_RETENTION_DAYS, DEBUG_RETENTION_DAYS));
        assert_eq!(DEBUG_MODE_DAYS, 28, "the proxy-debug text says 4 weeks");
        assert!(category("proxy-debug").unwrap().data.contains("by default after 4 weeks"));
        assert_eq!(category("provisioning-cache").unwrap().stored_in, ["proxy:memory"]);
    }

    /// IPv4 keeps its /24, IPv6 its /48, a mapped IPv4 address counts as IPv4; anonymising
    /// twice changes nothing.
    #[test]
    fn ip_addresses_are_truncated() {
        let cases = [
            ("192.0.2.77", "192.0.2.0"),
            ("2001:db8:1234:5678::9", "2001:db8:1234::"),
            ("::ffff:198.51.100.3", "198.51.100.0"),
            ("10.0.0.0", "10.0.0.0"),
        ];
        for (ip, want) in cases {
            let got = anonymise_ip(ip.parse().unwrap());
            assert_eq!(got.to_string(), want);
            assert_eq!(anonymise_ip(got), got);
            assert!(is_anonymised_ip(got));
        }
        assert!(!is_anonymised_ip("192.0.2.77".parse().unwrap()));
    }

    /// Numbers lose their last three characters, short ones everything.
    #[test]
    fn numbers_are_masked() {
        assert_eq!(mask_number("0301234567"), "0301234xxx");
        assert_eq!(mask_number("1001"), "1xxx");
        assert_eq!(mask_number("100"), "xxx");
        assert_eq!(mask_number(""), "");
        assert_eq!(mask_number("admin"), "adxxx");
    }

    /// The host of contact URIs, IPv6 too; nothing for a URI without one.
    #[test]
    fn uri_hosts() {
        assert_eq!(uri_host("sip:1001@192.0.2.7:5060;transport=udp"), Some("192.0.2.7"));
        assert_eq!(uri_host("<sip:1001@[2001:db8::1]:5060>"), Some("2001:db8::1"));
        assert_eq!(uri_host("sip:pbx.example"), Some("pbx.example"));
        assert_eq!(uri_host("sips:a@b?x=y"), Some("b"));
        assert_eq!(uri_host("sip:"), None);
    }

    /// Anonymising a security entry truncates, masks and marks it.
    #[test]
    fn security_entries_anonymise() {
        let mut e = SecurityEntry::new(
            Timestamp::from_secs(1),
            "203.0.113.99".parse().unwrap(),
            Some("1001".into()),
            SecurityEvent::AuthFailed,
        );
        assert_eq!((e.source_bits, e.count), (32, 1));
        e.anonymise();
        assert_eq!(
            (e.source.to_string(), e.source_bits, e.user.as_deref(), e.anonymised),
            ("203.0.113.0".into(), 24, Some("1xxx"), true)
        );
    }

    /// Flood networks: an IPv4 address's /24, an IPv6 address's /64, mapped IPv4 as IPv4.
    #[test]
    fn flood_networks() {
        let net = |ip: &str| {
            let (n, bits) = flood_network(ip.parse().unwrap());
            format!("{n}/{bits}")
        };
        assert_eq!(net("192.0.2.77"), "192.0.2.0/24");
        assert_eq!(net("::ffff:198.51.100.3"), "198.51.100.0/24");
        assert_eq!(net("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64");
    }

    /// Absorbing: counts add; one address stays exact; two addresses of one /24 (/64) become
    /// that network; addresses of different networks become `::/0`; the first user stays, the
    /// later event wins.
    #[test]
    fn entries_absorb_later_ones() {
        let at = Timestamp::from_secs(60);
        let e = |ip: &str, user: &str, event| SecurityEntry::new(at, ip.parse().unwrap(), Some(user.into()), event);
        let blocked = |s| SecurityEvent::Blocked { until: Timestamp::from_secs(s) };
        let mut sum = e("192.0.2.7", "100", blocked(100));
        sum.absorb(&e("192.0.2.7", "101", blocked(200)));
        assert_eq!((sum.source.to_string(), sum.source_bits, sum.count), ("192.0.2.7".into(), 32, 2));
        assert_eq!((sum.user.as_deref(), sum.event), (Some("100"), blocked(200)));
        sum.absorb(&e("192.0.2.99", "102", blocked(150)));
        assert_eq!((sum.source.to_string(), sum.source_bits, sum.count), ("192.0.2.0".into(), 24, 3));
        sum.absorb(&e("192.0.2.3", "102", blocked(150)));
        assert_eq!((sum.source.to_string(), sum.source_bits, sum.count), ("192.0.2.0".into(), 24, 4));
        let mut v6 = e("2001:db8::1", "100", SecurityEvent::AuthFailed);
        v6.absorb(&e("2001:db8::ffff:2", "100", SecurityEvent::AuthFailed));
        assert_eq!((v6.source.to_string(), v6.source_bits), ("2001:db8::".into(), 64));
        sum.absorb(&v6);
        assert_eq!((sum.source.to_string(), sum.source_bits, sum.count), ("::".into(), 0, 6));
        let mut old = e("192.0.2.7", "1001", SecurityEvent::AuthFailed);
        old.anonymise();
        let mut fresh = e("192.0.2.7", "1001", SecurityEvent::AuthFailed);
        fresh.absorb(&old);
        assert!(fresh.anonymised && fresh.user.as_deref() == Some("1xxx") && fresh.source_bits == 24, "{fresh:?}");
    }

    /// Subject ids: addresses (IPv6 too, mapped IPv4 as IPv4), numbers; the rest is refused
    /// with the reason.
    #[test]
    fn subjects_parse_or_say_why_not() {
        assert_eq!(Subject::parse("1001"), Ok(Subject::Number("1001".into())));
        assert_eq!(Subject::parse("+49301234567"), Ok(Subject::Number("+49301234567".into())));
        assert_eq!(Subject::parse("192.0.2.1"), Ok(Subject::Ip("192.0.2.1".parse().unwrap())));
        assert_eq!(Subject::parse("::ffff:192.0.2.1"), Ok(Subject::Ip("192.0.2.1".parse().unwrap())));
        assert_eq!(Subject::parse("2001:db8::1").unwrap().id(), "2001:db8::1");
        for bad in ["", "a b", "1001@host", &"1".repeat(65), "anonymous", "<script>"] {
            assert!(Subject::parse(bad).is_err(), "{bad:?}");
        }
    }
}

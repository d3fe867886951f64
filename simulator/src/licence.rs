//! The licence service in the simulation, and the checkers of the licence watchdog.
//!
//! The service is the product's own [`Desk`] — the logic `pbx licence-server` runs — on a
//! host of the simulated network, with outages (the service unreachable for an hour or for
//! weeks, drawn from the seed) and answers tampered with on the way (a limit raised in the
//! signed text). The checkers hold the node's watchdog to the promises:
//!
//! - no premature switch-off: never expired before the grace period has run from the last
//!   successful check the node could remember (in memory, or on disk after a crash);
//! - switch-off on time: licensed features are off within one retry interval of the grace
//!   deadline when no check succeeded;
//! - back on at the first successful check;
//! - nothing tampered is ever in force: while licensed, the limits are exactly those granted;
//! - the service's request log keeps a full IP address no longer than 14 days.

use crate::check::Checker;
use bytes::Bytes;
use pbx_actors::Timestamp;
use pbx_actors::licence::desk::{ANONYMISE_AFTER_S, Desk, DeskError, DeskState, Grant};
use pbx_actors::licence::{Feature, LicenceServiceError, Limits, SigningKey, WatchdogConfig};
use serde::Deserialize;
use std::net::IpAddr;
use std::time::Duration;

/// Room for the check period and the network.
const SLACK: Duration = Duration::from_secs(60);

/// The licence scenario of a run.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LicenceOptions {
    /// Run the watchdog against the simulated service (off: the node is not licence-managed).
    pub enabled: bool,
    /// Service outages, on average this many per 30 days...
    pub outages_per_30d: f64,
    /// ...each lasting this many hours (uniform): some shorter than the grace, some longer.
    pub outage_h: (u64, u64),
    /// An answer's signed text altered on the way (a limit raised).
    pub tamper: f64,
    pub grace_days: u32,
    /// The node's clock is this many hours ahead (negative: behind) of the service's.
    pub node_clock_offset_h: i64,
    /// Outages at fixed times besides the random ones: (start, length) in hours from the
    /// run's start — for scenarios that must cross (or not) the grace deadline.
    pub outages: Vec<(u64, u64)>,
}

impl Default for LicenceOptions {
    fn default() -> Self {
        LicenceOptions {
            enabled: true,
            outages_per_30d: 2.0,
            outage_h: (1, 20 * 24),
            tamper: 0.05,
            grace_days: 14,
            node_clock_offset_h: 0,
            outages: Vec::new(),
        }
    }
}

/// What the simulated vendor sold the node.
pub fn grant() -> Grant {
    Grant {
        features: [Feature::Conference].into(),
        limits: Limits {
            extensions: 1_000,
            concurrent_calls: 60,
            conference_rooms: 5,
            proxy_seats: 0,
            cluster_nodes: 1,
        },
        valid_days: 365,
    }
}

pub const SERIAL: &str = "SIM-PBX-1";

/// The licence service host: the product's desk, and whether it is reachable.
pub struct LicenceHost {
    pub desk: Desk,
    pub down_until: Option<Timestamp>,
    pub ip: IpAddr,
}

impl LicenceHost {
    /// A desk with its key drawn from the seed and the node's serial sold to it.
    pub fn new(seed: [u8; 32], ip: IpAddr) -> LicenceHost {
        let mut desk = Desk::new(SigningKey::from_seed(&seed), DeskState::default());
        desk.put_serial(SERIAL, grant()).expect("the simulated serial is valid");
        while desk.poll_output().is_some() {}
        LicenceHost { desk, down_until: None, ip }
    }

    pub fn watchdog_config(&self, options: &LicenceOptions, bugs: pbx_actors::bugs::Bugs) -> WatchdogConfig {
        let mut config = WatchdogConfig::new(SERIAL, self.desk.public_key());
        config.grace = Duration::from_secs(u64::from(options.grace_days) * 86_400);
        config.bugs = bugs;
        config
    }

    /// Answers a check as `pbx licence-server` would: the sealed licence's JSON, or an error.
    pub fn check(&mut self, now: Timestamp, from: IpAddr, serial: &str) -> Result<Bytes, LicenceServiceError> {
        if self.down_until.is_some_and(|until| now < until) {
            return Err(LicenceServiceError::Transport("connect: connection refused".into()));
        }
        let answer = self.desk.check(now, from, serial);
        // The service stores before it answers; here the desk's state is the store.
        while self.desk.poll_output().is_some() {}
        // As the node's client reads the service's statuses.
        let envelope = answer.map_err(|e| match e {
            DeskError::UnknownSerial => LicenceServiceError::UnknownSerial,
            other => LicenceServiceError::Status { code: 400, reason: other.to_string() },
        })?;
        Ok(Bytes::from(serde_json::to_vec(&envelope).expect("envelopes serialize")))
    }

    /// Anonymises what is due in the request log.
    pub fn tick(&mut self, now: Timestamp) {
        if self.desk.poll_timeout().is_some_and(|t| t <= now) {
            self.desk.handle_timeout(now);
            while self.desk.poll_output().is_some() {}
        }
    }
}

/// An answer altered on the way: a limit raised in the signed text, signature kept.
pub fn tamper(body: &Bytes) -> Bytes {
    let text = String::from_utf8_lossy(body);
    Bytes::from(text.replacen("\\\"concurrent_calls\\\":60", "\\\"concurrent_calls\\\":6000", 1).into_bytes())
}

/// What the licence checkers remember about one node.
#[derive(Debug, Default)]
pub struct LicenceModel {
    /// The node's clock when it last received a genuine, successful answer.
    pub last_success: Option<Timestamp>,
    /// `checked_at` of the last licence the node's disk committed.
    pub durable_success: Option<Timestamp>,
    /// The node crashed after `last_success` (so only the durable one counts).
    pub crashed_since_success: bool,
}

impl Checker {
    /// The node's licence, judged against what the service really answered.
    pub fn check_licence(
        &mut self,
        now: Timestamp,
        node_now: Timestamp,
        licence: (&'static str, pbx_actors::licence::Effective, Option<Timestamp>),
        model: &LicenceModel,
        grace: Duration,
        retry: Duration,
    ) {
        let (status, effective, _) = licence;
        let remembered = match (model.crashed_since_success, model.last_success, model.durable_success) {
            (false, Some(memory), durable) => Some(durable.map_or(memory, |d| d.max(memory))),
            (_, _, durable) => durable,
        };
        if status == "expired" {
            self.check(
                now,
                "no premature licence switch-off",
                remembered.is_none_or(|r| node_now >= r + grace),
                || format!("expired at {node_now}, but a check succeeded at {remembered:?} (grace {grace:?})"),
            );
        }
        if let Some(last) = model.last_success {
            let overdue = node_now >= last + grace + retry + SLACK;
            self.check(now, "licensed features off at the grace deadline", !(overdue && effective.licensed), || {
                format!("still {status} at {node_now}; the last check succeeded at {last} (grace {grace:?})")
            });
        }
        if effective.licensed {
            self.check(now, "nothing tampered is in force", effective.limits == grant().limits, || {
                format!("limits in force {:?}, granted {:?}", effective.limits, grant().limits)
            });
        }
    }

    /// Right after a genuine successful answer reached a settled node.
    pub fn check_licensed_after_success(&mut self, now: Timestamp, status: &'static str) {
        self.check(now, "licensed again at the first successful check", status == "licensed", || {
            format!("a genuine licence arrived, the node says {status}")
        });
    }

    /// The service's request log: a full IP address is kept no longer than 14 days.
    pub fn check_service_log(&mut self, now: Timestamp, desk: &Desk) {
        let limit = Duration::from_secs(ANONYMISE_AFTER_S) + SLACK;
        let stale = desk.state().log.iter().find(|e| !e.anonymised && now >= e.at + limit).map(|e| (e.id, e.at));
        self.check(now, "service logs anonymised after 14 days", stale.is_none(), || {
            format!("log entry {stale:?} still holds a full IP address")
        });
    }
}

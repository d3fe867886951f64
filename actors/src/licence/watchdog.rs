//! The licence watchdog: asks the licence service for this serial's licence every day,
//! verifies what comes back offline, and switches licensed features off only after the
//! grace period without one successful check (issue "Licence watchdog, voucher sync").
//!
//! Sans-IO, like every machine here: no clock, no I/O, no RNG. The shell performs
//! [`WatchdogOutput::Check`] (an HTTPS POST carrying the serial and nothing else), stores
//! [`WatchdogOutput::Persist`], and feeds the answer back as [`WatchdogInput::Response`].
//!
//! # Rules
//!
//! - A check is due at start, then [`WatchdogConfig::check_interval`] (24 h) after each
//!   success, or [`WatchdogConfig::retry_interval`] (1 h) after each failure. One request is in
//!   flight at most; the shell bounds it and always answers (an error text on timeout).
//! - A success is a body that parses as an [`Envelope`] whose signature verifies with the
//!   service's key and whose document is a licence for our serial. Anything else (transport or
//!   TLS error, HTTP error, an HTML page, an empty or tampered body, another serial) is a
//!   failure: logged, retried, and *never* a reason to switch anything off early.
//! - Grace: the licence keeps working until `last_success + grace` (14 days). At that
//!   instant, which [`Watchdog::poll_timeout`] reports, the status becomes
//!   [`LicenceStatus::Expired`]; the first later success makes it licensed again.
//! - Between a failed check and the end of grace the status is [`LicenceStatus::Grace`]: still
//!   licensed, but the admin should know the service is unreachable ([`Watchdog::last_error`]
//!   says why).
//! - A licence's own `valid_until` bounds it however recently it was fetched.
//!
//! # Clocks
//!
//! The grace period is measured on the node's clock only (`last_success` and `now` both come
//! from it), so a node whose clock is off by days still gets exactly 14 days. `valid_until` is
//! the service's clock; the node compares it with its own, allowing
//! [`WatchdogConfig::clock_tolerance`] (1 day): a licence grants nothing from
//! `valid_until + tolerance` on the node's clock. `issued_at` is not compared at all, so a node
//! running behind accepts a licence "issued in its future". A node's clock set back by a year
//! would stretch both bounds by a year; offline verification cannot tell, and the service sees
//! the node's checks.
//!
//! Not done here: revocation (a licence stays valid until `valid_until`), and refusing an
//! older licence than the one held (the service signs both; it never needs to roll back).

use super::document::{Envelope, Feature, Licence, Limits, PublicKey, Unlocks};
use super::error::LicenceServiceError;
use crate::Timestamp;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

/// A successful check is repeated after this long (the issue: "every 24 h").
pub const CHECK_INTERVAL_S: u64 = 24 * 3600;
/// A failed check is retried after this long (the issue: "retries hourly").
pub const RETRY_INTERVAL_S: u64 = 3600;
/// How long after the last success a licence keeps working (the default, 14 days).
pub const GRACE_S: u64 = 14 * 24 * 3600;
/// How far the node's clock may disagree with the service's when comparing `valid_until`.
pub const CLOCK_TOLERANCE_S: u64 = 24 * 3600;
/// Error texts are cut to this length: a proxy's HTML page must not fill logs and the API.
pub const REASON_CHARS_MAX: usize = 200;

const _: () = assert!(RETRY_INTERVAL_S < CHECK_INTERVAL_S);
// At least a dozen daily checks must fail before anything switches off.
const _: () = assert!(CHECK_INTERVAL_S * 12 < GRACE_S);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchdogConfig {
    /// This PBX's serial number: the only thing a check sends.
    pub serial: String,
    /// The licence service's Ed25519 key; licences are verified with it, offline.
    pub public_key: PublicKey,
    pub check_interval: Duration,
    pub retry_interval: Duration,
    pub grace: Duration,
    pub clock_tolerance: Duration,
    /// Deliberate bugs for the simulator's self-test; none anywhere else.
    pub bugs: crate::bugs::Bugs,
}

impl WatchdogConfig {
    /// The defaults: check daily, retry hourly, 14 days' grace, 1 day's clock tolerance.
    pub fn new(serial: impl Into<String>, public_key: PublicKey) -> WatchdogConfig {
        WatchdogConfig {
            serial: serial.into(),
            public_key,
            check_interval: Duration::from_secs(CHECK_INTERVAL_S),
            retry_interval: Duration::from_secs(RETRY_INTERVAL_S),
            grace: Duration::from_secs(GRACE_S),
            clock_tolerance: Duration::from_secs(CLOCK_TOLERANCE_S),
            bugs: Default::default(),
        }
    }

    /// The grace period in force: the configured one, or half of it under the injected bug.
    fn grace(&self) -> Duration {
        if self.bugs.early_expiry() { self.grace / 2 } else { self.grace }
    }
}

/// The last licence that verified, as the shell stores it, so a node restarted during an
/// outage is licensed at once, offline. It is verified again on load: a tampered store is
/// ignored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    pub envelope: Envelope,
    /// When the check that fetched it succeeded (node clock).
    pub checked_at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchdogInput {
    /// The answer to [`WatchdogOutput::Check`] `request`: the body of a 200, or why not
    /// (transport, TLS, HTTP status, the shell's timeout). Ignored unless `request` is in flight.
    Response { request: u64, result: Result<Bytes, LicenceServiceError> },
    /// [`Watchdog::poll_timeout`] has come.
    Timeout,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchdogOutput {
    /// POST the serial to the licence service; answer with [`WatchdogInput::Response`].
    Check {
        request: u64,
        serial: String,
    },
    /// Store this, replacing the last one.
    Persist(Stored),
    Event(WatchdogEvent),
}

/// For logs and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchdogEvent {
    /// A licence verified; `valid_until` in Unix seconds.
    Checked { valid_until: u64 },
    /// A check failed; nothing changes before the grace period ends.
    CheckFailed { reason: String, retry_at: Timestamp },
    /// [`LicenceStatus::name`] before and after.
    StatusChanged { from: &'static str, to: &'static str },
    /// The stored licence did not verify at start-up and was ignored.
    StoredIgnored { reason: String },
}

/// Where the licence stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum LicenceStatus {
    /// This node has never held a valid licence.
    Unlicensed,
    /// The last check succeeded.
    Licensed { licence: Licence, last_success: Timestamp, grace_until: Timestamp },
    /// The last check failed, but the grace period has not run out: still licensed.
    Grace { licence: Licence, last_success: Timestamp, grace_until: Timestamp },
    /// No success for the whole grace period, or the licence's `valid_until` has passed:
    /// licensed features are off. `licence` is the last one held (the watchdog only reaches
    /// this state from one; `None` is kept for a licence the service withdraws).
    Expired { licence: Option<Licence>, since: Timestamp },
}

impl LicenceStatus {
    pub fn name(&self) -> &'static str {
        match self {
            LicenceStatus::Unlicensed => "unlicensed",
            LicenceStatus::Licensed { .. } => "licensed",
            LicenceStatus::Grace { .. } => "grace",
            LicenceStatus::Expired { .. } => "expired",
        }
    }

    /// The licence in force: `Some` while licensed or in grace.
    pub fn licence(&self) -> Option<&Licence> {
        match self {
            LicenceStatus::Licensed { licence, .. } | LicenceStatus::Grace { licence, .. } => Some(licence),
            _ => None,
        }
    }
}

/// What the rest of pbx obeys: features on and numeric limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Effective {
    /// Whether a licence is in force (licensed or grace). Unlocks only count when it is.
    pub licensed: bool,
    pub features: BTreeSet<Feature>,
    pub limits: Limits,
}

impl Effective {
    /// No licence: no features, [`Limits::UNLICENSED`]; internal calls keep working.
    pub fn unlicensed() -> Effective {
        Effective { licensed: false, features: BTreeSet::new(), limits: Limits::UNLICENSED }
    }

    pub fn licensed(licence: &Licence) -> Effective {
        Effective { licensed: true, features: licence.features.clone(), limits: licence.limits }
    }

    pub fn has(&self, feature: Feature) -> bool {
        self.features.contains(&feature)
    }

    /// Adds what redeemed vouchers unlock. Vouchers extend a licence, they do not replace
    /// one: on an unlicensed (or expired) node this returns `self` unchanged.
    pub fn with_unlocks(mut self, unlocks: &Unlocks) -> Effective {
        if self.licensed {
            self.features.extend(unlocks.features.iter().copied());
            self.limits = self.limits.plus(unlocks.limits);
        }
        self
    }
}

impl Default for Effective {
    fn default() -> Effective {
        Effective::unlicensed()
    }
}

/// The licence watchdog machine.
///
/// Calling contract: after [`Watchdog::new`] and after every [`Watchdog::handle`], drain
/// [`Watchdog::poll_output`] until `None`, then arm one timer for [`Watchdog::poll_timeout`]
/// and call `handle(now, Timeout)` when it comes (early is harmless). `now` never goes
/// backwards across calls (Unix-epoch µs in the node, so a stored `checked_at` stays meaningful
/// after a restart). Answer every `Check` with exactly one `Response`.
#[derive(Debug)]
pub struct Watchdog {
    config: WatchdogConfig,
    /// The last licence that verified and when (node clock) it was fetched.
    held: Option<(Licence, Timestamp)>,
    status: LicenceStatus,
    last_error: Option<String>,
    next_check: Timestamp,
    in_flight: Option<u64>,
    next_request: u64,
    outputs: VecDeque<WatchdogOutput>,
}

impl Watchdog {
    /// A watchdog whose first check is due at `now`. `stored` (the last [`Stored`] the shell
    /// kept) is verified again; if it verifies, the node is licensed from its `checked_at`
    /// without asking the service.
    pub fn new(config: WatchdogConfig, now: Timestamp, stored: Option<Stored>) -> Watchdog {
        let mut outputs = VecDeque::new();
        let held = stored.and_then(|stored| match stored.envelope.open_licence(&config.public_key, &config.serial) {
            Ok(licence) => Some((licence, stored.checked_at)),
            Err(refused) => {
                let reason = bounded(&refused.to_string());
                outputs.push_back(WatchdogOutput::Event(WatchdogEvent::StoredIgnored { reason }));
                None
            }
        });
        let mut watchdog = Watchdog {
            config,
            held,
            status: LicenceStatus::Unlicensed,
            last_error: None,
            next_check: now,
            in_flight: None,
            next_request: 1,
            outputs,
        };
        watchdog.status = watchdog.status_at(now);
        watchdog
    }

    pub fn handle(&mut self, now: Timestamp, input: WatchdogInput) {
        match input {
            WatchdogInput::Response { request, result } => {
                if self.in_flight != Some(request) {
                    return; // stale or duplicate: that request was answered already
                }
                self.in_flight = None;
                match result.map_err(|e| bounded(&e.to_string())).and_then(|body| self.verify(&body)) {
                    Ok((licence, envelope)) => {
                        let valid_until = licence.valid_until;
                        self.held = Some((licence, now));
                        self.last_error = None;
                        self.next_check = now + self.config.check_interval;
                        self.outputs.push_back(WatchdogOutput::Persist(Stored { envelope, checked_at: now }));
                        self.outputs.push_back(WatchdogOutput::Event(WatchdogEvent::Checked { valid_until }));
                    }
                    Err(reason) => {
                        let retry_at = now + self.config.retry_interval;
                        self.last_error = Some(reason.clone());
                        self.next_check = retry_at;
                        self.outputs.push_back(WatchdogOutput::Event(WatchdogEvent::CheckFailed { reason, retry_at }));
                    }
                }
            }
            WatchdogInput::Timeout => {}
        }
        if self.in_flight.is_none() && now >= self.next_check {
            let request = self.next_request;
            self.next_request += 1;
            self.in_flight = Some(request);
            self.outputs.push_back(WatchdogOutput::Check { request, serial: self.config.serial.clone() });
        }
        self.update_status(now);
    }

    pub fn poll_output(&mut self) -> Option<WatchdogOutput> {
        self.outputs.pop_front()
    }

    /// The next check (unless one is in flight) or the instant the licence in force lapses,
    /// whichever is first.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let check = self.in_flight.is_none().then_some(self.next_check);
        let lapse = self.status.licence().and_then(|_| self.lapses_at());
        [check, lapse].into_iter().flatten().min()
    }

    pub fn status(&self) -> &LicenceStatus {
        &self.status
    }

    /// What pbx may do at `now`. Exact even if the timer for a lapse has not been handled yet.
    pub fn effective(&self, now: Timestamp) -> Effective {
        match self.status_at(now).licence() {
            Some(licence) => Effective::licensed(licence),
            None => Effective::unlicensed(),
        }
    }

    /// Why the last check failed; `None` once one succeeds.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// When the last successful check was (node clock), including one restored from storage.
    pub fn last_success(&self) -> Option<Timestamp> {
        self.held.as_ref().map(|(_, at)| *at)
    }

    /// When, without another success, the grace period ends.
    pub fn grace_until(&self) -> Option<Timestamp> {
        self.last_success().map(|at| at + self.config.grace())
    }

    /// When the next check is due; `None` while one is in flight.
    pub fn next_check(&self) -> Option<Timestamp> {
        self.in_flight.is_none().then_some(self.next_check)
    }

    /// The last licence that verified, in force or not.
    pub fn licence(&self) -> Option<&Licence> {
        self.held.as_ref().map(|(licence, _)| licence)
    }

    pub fn config(&self) -> &WatchdogConfig {
        &self.config
    }

    fn verify(&self, body: &[u8]) -> Result<(Licence, Envelope), String> {
        let refused = |r: super::document::Refused| bounded(&r.to_string());
        let envelope = Envelope::parse(body).map_err(refused)?;
        let licence = envelope.open_licence(&self.config.public_key, &self.config.serial).map_err(refused)?;
        Ok((licence, envelope))
    }

    /// The earlier of the end of grace and the licence's own end (with the clock tolerance).
    fn lapses_at(&self) -> Option<Timestamp> {
        let (licence, last_success) = self.held.as_ref()?;
        let grace_until = *last_success + self.config.grace();
        let valid_until = Timestamp::from_secs(licence.valid_until) + self.config.clock_tolerance;
        Some(grace_until.min(valid_until))
    }

    fn status_at(&self, now: Timestamp) -> LicenceStatus {
        let Some((licence, last_success)) = &self.held else { return LicenceStatus::Unlicensed };
        let lapses_at = self.lapses_at().expect("a licence is held");
        if now >= lapses_at {
            return LicenceStatus::Expired { licence: Some(licence.clone()), since: lapses_at };
        }
        let (licence, last_success, grace_until) =
            (licence.clone(), *last_success, *last_success + self.config.grace());
        match self.last_error {
            None => LicenceStatus::Licensed { licence, last_success, grace_until },
            Some(_) => LicenceStatus::Grace { licence, last_success, grace_until },
        }
    }

    fn update_status(&mut self, now: Timestamp) {
        let status = self.status_at(now);
        let (from, to) = (self.status.name(), status.name());
        self.status = status;
        if from != to {
            self.outputs.push_back(WatchdogOutput::Event(WatchdogEvent::StatusChanged { from, to }));
        }
    }
}

/// `text` cut to [`REASON_CHARS_MAX`] characters.
pub(super) fn bounded(text: &str) -> String {
    match text.char_indices().nth(REASON_CHARS_MAX) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::licence::document::{Kind, SigningKey};

    const SERIAL: &str = "PBX-0001";
    const HOUR: Duration = Duration::from_secs(3600);
    const DAY: Duration = Duration::from_secs(24 * 3600);
    /// 2026-01-05, service and node clocks agreeing unless a test says otherwise.
    const START: Timestamp = Timestamp::from_secs(1_767_571_200);

    /// The time `d` before `t` (Timestamp only adds).
    fn ago(t: Timestamp, d: Duration) -> Timestamp {
        Timestamp(t.as_micros() - d.as_micros() as u64)
    }

    fn service_key() -> SigningKey {
        SigningKey::from_seed(&[7; 32])
    }

    fn licence_at(serial: &str, issued: Timestamp, valid_for: Duration) -> Licence {
        Licence {
            kind: Kind::Licence,
            serial: serial.into(),
            features: [Feature::Conference, Feature::Push].into(),
            limits: Limits { extensions: 200, concurrent_calls: 60, ..Limits::UNLICENSED },
            issued_at: issued.as_secs(),
            valid_until: (issued + valid_for).as_secs(),
        }
    }

    /// A body the service would send: a year's licence issued at `now`.
    fn good_body(now: Timestamp) -> Bytes {
        body_of(&licence_at(SERIAL, now, 365 * DAY))
    }

    fn body_of(licence: &Licence) -> Bytes {
        serde_json::to_vec(&service_key().seal(licence)).unwrap().into()
    }

    fn config() -> WatchdogConfig {
        WatchdogConfig::new(SERIAL, service_key().public_key())
    }

    /// The watchdog and a fake service that answers each check at once, on virtual time.
    struct Harness {
        wd: Watchdog,
        now: Timestamp,
        checks: Vec<Timestamp>,
        events: Vec<(Timestamp, WatchdogEvent)>,
        persisted: Vec<Stored>,
    }

    impl Harness {
        fn new(now: Timestamp, stored: Option<Stored>) -> Harness {
            let mut h = Harness {
                wd: Watchdog::new(config(), now, stored),
                now,
                checks: vec![],
                events: vec![],
                persisted: vec![],
            };
            h.drain(&mut |_| unreachable!("no check before the first timeout"));
            h
        }

        /// Collects outputs; each `Check` is answered at the same instant by `service`.
        fn drain(&mut self, service: &mut dyn FnMut(Timestamp) -> Result<Bytes, LicenceServiceError>) {
            while let Some(output) = self.wd.poll_output() {
                match output {
                    WatchdogOutput::Check { request, serial } => {
                        assert_eq!(serial, SERIAL);
                        self.checks.push(self.now);
                        let result = service(self.now);
                        self.wd.handle(self.now, WatchdogInput::Response { request, result });
                    }
                    WatchdogOutput::Persist(stored) => self.persisted.push(stored),
                    WatchdogOutput::Event(event) => self.events.push((self.now, event)),
                }
            }
        }

        /// Steps through every wake-up up to and including `end`, then sets the time to `end`.
        fn run_until(
            &mut self,
            end: Timestamp,
            mut service: impl FnMut(Timestamp) -> Result<Bytes, LicenceServiceError>,
        ) {
            for _ in 0..100_000 {
                match self.wd.poll_timeout() {
                    Some(at) if at <= end => {
                        assert!(at >= self.now, "timeout in the past: {at} < {}", self.now);
                        self.now = at;
                        self.wd.handle(at, WatchdogInput::Timeout);
                        self.drain(&mut service);
                    }
                    _ => {
                        self.now = end;
                        return;
                    }
                }
            }
            panic!("livelock: 100000 wake-ups before {end}");
        }

        fn status_changes(&self) -> Vec<(Timestamp, &'static str)> {
            self.events
                .iter()
                .filter_map(|(at, e)| match e {
                    WatchdogEvent::StatusChanged { to, .. } => Some((*at, *to)),
                    _ => None,
                })
                .collect()
        }

        fn failures(&self) -> usize {
            self.events.iter().filter(|(_, e)| matches!(e, WatchdogEvent::CheckFailed { .. })).count()
        }
    }

    fn down(_: Timestamp) -> Result<Bytes, LicenceServiceError> {
        Err(LicenceServiceError::Transport("connect: connection refused".into()))
    }

    fn up(now: Timestamp) -> Result<Bytes, LicenceServiceError> {
        Ok(good_body(now))
    }

    /// The first check is due at start, and it carries the serial and nothing else.
    #[test]
    fn first_check_is_due_at_start() {
        let mut wd = Watchdog::new(config(), START, None);
        assert_eq!(wd.poll_output(), None);
        assert_eq!(wd.poll_timeout(), Some(START));
        assert_eq!(wd.status(), &LicenceStatus::Unlicensed);
        assert_eq!(wd.effective(START), Effective::unlicensed());
        wd.handle(START, WatchdogInput::Timeout);
        assert_eq!(wd.poll_output(), Some(WatchdogOutput::Check { request: 1, serial: SERIAL.into() }));
        assert_eq!(wd.poll_output(), None);
        // Only one request in flight: nothing else is scheduled until it is answered.
        assert_eq!(wd.poll_timeout(), None);
        wd.handle(START + HOUR, WatchdogInput::Timeout);
        assert_eq!(wd.poll_output(), None);
    }

    /// A verified licence makes the node licensed, is persisted, and the next check is 24 h on.
    #[test]
    fn success_licenses_persists_and_checks_again_in_24_hours() {
        let mut h = Harness::new(START, None);
        h.run_until(START, up);
        assert_eq!(h.checks, [START]);
        let licence = licence_at(SERIAL, START, 365 * DAY);
        assert_eq!(
            h.wd.status(),
            &LicenceStatus::Licensed { licence: licence.clone(), last_success: START, grace_until: START + 14 * DAY }
        );
        assert_eq!(h.persisted, [Stored { envelope: service_key().seal(&licence), checked_at: START }]);
        assert_eq!(h.status_changes(), [(START, "licensed")]);
        assert!(h.events.contains(&(START, WatchdogEvent::Checked { valid_until: licence.valid_until })));
        assert_eq!(h.wd.poll_timeout(), Some(START + DAY));
        let effective = h.wd.effective(START);
        assert!(effective.licensed && effective.has(Feature::Conference) && effective.has(Feature::Push));
        assert_eq!(effective.limits.extensions, 200);
        h.run_until(ago(START + 3 * DAY, Duration::from_micros(1)), up);
        assert_eq!(h.checks, [START, START + DAY, START + 2 * DAY]);
        assert_eq!(h.persisted.len(), 3);
    }

    /// The service down for 13 days: retried once an hour, and the node stays licensed throughout.
    #[test]
    fn thirteen_days_down_stay_licensed_with_hourly_retries() {
        let mut h = Harness::new(START, None);
        h.run_until(START, up);
        let mut t = START;
        while t < START + 13 * DAY {
            t = t + Duration::from_secs(600);
            h.run_until(t, down);
            assert!(h.wd.effective(t).licensed, "switched off early at {t}");
        }
        // The daily check at +1 d fails, then one retry an hour up to +13 d inclusive.
        assert_eq!(h.checks.len(), 1 + 1 + 12 * 24);
        assert!(h.checks.windows(2).skip(1).all(|w| w[1] - w[0] == HOUR));
        assert_eq!(h.failures(), 1 + 12 * 24);
        assert_eq!(h.wd.status().name(), "grace");
        assert_eq!(h.wd.last_error(), Some("connect: connection refused"));
        assert_eq!(h.status_changes(), [(START, "licensed"), (START + DAY, "grace")]);
        assert_eq!(h.persisted.len(), 1);
    }

    /// Down for 15 days: expired at exactly last success + 14 d, licensed again at the next
    /// successful check (within one retry interval).
    #[test]
    fn fifteen_days_down_expire_at_the_end_of_grace_and_recover() {
        let mut h = Harness::new(START, None);
        h.run_until(START, up);
        let deadline = START + 14 * DAY;
        assert_eq!(h.wd.effective(ago(deadline, Duration::from_micros(1))).limits.extensions, 200);
        assert_eq!(h.wd.effective(deadline), Effective::unlicensed());
        h.run_until(START + 15 * DAY, down);
        assert_eq!(h.status_changes(), [(START, "licensed"), (START + DAY, "grace"), (deadline, "expired")]);
        let licence = licence_at(SERIAL, START, 365 * DAY);
        assert_eq!(h.wd.status(), &LicenceStatus::Expired { licence: Some(licence), since: deadline });
        assert_eq!(h.wd.effective(h.now), Effective::unlicensed());
        // Retries go on hourly while expired.
        assert_eq!(h.wd.poll_timeout(), Some(START + 15 * DAY + HOUR));
        h.run_until(START + 16 * DAY, up);
        let back = START + 15 * DAY + HOUR;
        assert_eq!(h.status_changes().last(), Some(&(back, "licensed")));
        assert!(h.wd.effective(h.now).licensed);
        assert_eq!(h.wd.grace_until(), Some(back + 14 * DAY));
        assert_eq!(h.wd.last_error(), None);
    }

    /// Every kind of bad answer is refused and retried hourly, and none switches anything off.
    #[test]
    fn bad_answers_are_refused_retried_and_never_switch_off() {
        let mut tampered = service_key().seal(&licence_at(SERIAL, START, 365 * DAY));
        tampered.document = tampered.document.replace("200", "20000");
        let other_key = SigningKey::from_seed(&[9; 32]).seal(&licence_at(SERIAL, START, 365 * DAY));
        let unlocks = service_key().seal(&Unlocks {
            kind: Kind::Unlocks,
            serial: SERIAL.into(),
            features: [Feature::Cluster].into(),
            limits: Limits::ZERO,
            release_codes: vec![],
            issued_at: START.as_secs(),
        });
        let json = |e: &Envelope| Bytes::from(serde_json::to_vec(e).unwrap());
        let html = "<html><body>".to_string() + &"Gateway Timeout ".repeat(100) + "</body></html>";
        let bodies: Vec<(&str, Bytes)> = vec![
            ("signature", json(&tampered)),
            ("signature", json(&other_key)),
            ("malformed", Bytes::from(html)),
            ("malformed", Bytes::new()),
            ("serial", body_of(&licence_at("PBX-9999", START, 365 * DAY))),
            ("unreadable", json(&unlocks)),
        ];
        for (expect, body) in bodies {
            let mut h = Harness::new(START, None);
            h.run_until(START, up);
            h.run_until(START + DAY, |_| Ok(body.clone()));
            let reason = h.wd.last_error().expect("refused").to_string();
            assert!(reason.contains(expect), "{expect}: {reason}");
            assert!(reason.chars().count() <= REASON_CHARS_MAX + 1);
            assert_eq!(h.wd.poll_timeout(), Some(START + DAY + HOUR));
            assert_eq!(h.wd.status().name(), "grace");
            assert_eq!(h.wd.effective(h.now).limits.extensions, 200, "{expect}: tampering must not raise limits");
            assert_eq!(h.persisted.len(), 1);
            h.run_until(START + 13 * DAY, |_| Ok(body.clone()));
            assert!(h.wd.effective(h.now).licensed);
            assert_eq!(h.checks.len(), 2 + 12 * 24);
        }
    }

    /// A node that never reached the service stays unlicensed, retrying hourly.
    #[test]
    fn never_licensed_node_stays_unlicensed_and_retries() {
        let mut h = Harness::new(START, None);
        h.run_until(START + 3 * HOUR, down);
        assert_eq!(h.checks, [START, START + HOUR, START + 2 * HOUR, START + 3 * HOUR]);
        assert_eq!(h.wd.status(), &LicenceStatus::Unlicensed);
        assert!(h.status_changes().is_empty());
        assert_eq!(h.wd.effective(h.now).limits, Limits::UNLICENSED);
    }

    /// A node restarted 13 days after its last success is licensed at once, without network, and
    /// expires when that success is 14 days old.
    #[test]
    fn restart_within_grace_is_licensed_offline() {
        let checked_at = ago(START, 13 * DAY);
        let envelope = service_key().seal(&licence_at(SERIAL, checked_at, 365 * DAY));
        let mut h = Harness::new(START, Some(Stored { envelope, checked_at }));
        assert_eq!(h.wd.status().name(), "licensed");
        assert!(h.wd.effective(START).licensed);
        assert_eq!(h.wd.last_success(), Some(checked_at));
        assert!(h.events.is_empty() && h.checks.is_empty());
        h.run_until(START + 2 * DAY, down);
        assert_eq!(h.status_changes(), [(START, "grace"), (checked_at + 14 * DAY, "expired")]);
    }

    /// A node restarted 15 days after its last success starts expired, and recovers at the
    /// first check.
    #[test]
    fn restart_past_grace_is_expired() {
        let checked_at = ago(START, 15 * DAY);
        let licence = licence_at(SERIAL, checked_at, 365 * DAY);
        let envelope = service_key().seal(&licence);
        let mut h = Harness::new(START, Some(Stored { envelope, checked_at }));
        assert_eq!(h.wd.status(), &LicenceStatus::Expired { licence: Some(licence), since: checked_at + 14 * DAY });
        assert_eq!(h.wd.effective(START), Effective::unlicensed());
        h.run_until(START, up);
        assert_eq!(h.wd.status().name(), "licensed");
    }

    /// A stored licence edited on disk is ignored (and said so): the node starts from scratch.
    #[test]
    fn tampered_store_is_ignored() {
        let mut envelope = service_key().seal(&licence_at(SERIAL, START, 365 * DAY));
        envelope.document = envelope.document.replace("\"conference\"", "\"cluster\"");
        let h = Harness::new(START, Some(Stored { envelope, checked_at: START }));
        assert_eq!(h.wd.status(), &LicenceStatus::Unlicensed);
        assert!(
            matches!(&h.events[..], [(_, WatchdogEvent::StoredIgnored { reason })] if reason.contains("signature"))
        );
        assert_eq!(h.wd.poll_timeout(), Some(START));
    }

    /// Answers for requests not in flight (stale, duplicated, invented) change nothing.
    #[test]
    fn stale_and_duplicate_responses_are_ignored() {
        let mut wd = Watchdog::new(config(), START, None);
        wd.handle(START, WatchdogInput::Timeout);
        assert!(matches!(wd.poll_output(), Some(WatchdogOutput::Check { request: 1, .. })));
        wd.handle(START, WatchdogInput::Response { request: 7, result: Ok(good_body(START)) });
        assert_eq!(wd.poll_output(), None);
        assert_eq!(wd.status(), &LicenceStatus::Unlicensed);
        wd.handle(
            START,
            WatchdogInput::Response { request: 1, result: Err(LicenceServiceError::NoAnswer("timed out".into())) },
        );
        assert!(matches!(wd.poll_output(), Some(WatchdogOutput::Event(WatchdogEvent::CheckFailed { .. }))));
        // The same request answered again, now with a good body: still ignored.
        wd.handle(START, WatchdogInput::Response { request: 1, result: Ok(good_body(START)) });
        assert_eq!(wd.poll_output(), None);
        assert_eq!(wd.status(), &LicenceStatus::Unlicensed);
        assert_eq!(wd.poll_timeout(), Some(START + HOUR));
        wd.handle(START + HOUR, WatchdogInput::Timeout);
        assert!(matches!(wd.poll_output(), Some(WatchdogOutput::Check { request: 2, .. })));
    }

    /// A licence past its own valid_until grants nothing, however fresh the check.
    #[test]
    fn licence_past_valid_until_grants_nothing() {
        let mut h = Harness::new(START, None);
        let old = licence_at(SERIAL, ago(START, 40 * DAY), 30 * DAY);
        h.run_until(START, |_| Ok(body_of(&old)));
        assert_eq!(h.wd.last_error(), None, "the check itself succeeded");
        let since = Timestamp::from_secs(old.valid_until) + DAY;
        assert_eq!(h.wd.status(), &LicenceStatus::Expired { licence: Some(old), since });
        assert_eq!(h.wd.effective(START), Effective::unlicensed());
        assert_eq!(h.wd.poll_timeout(), Some(START + DAY));
    }

    /// A licence running out lapses at valid_until + 1 day on the node's clock, while the
    /// service is reachable, and a renewed licence restores it.
    #[test]
    fn licence_lapses_at_valid_until_plus_tolerance() {
        let mut h = Harness::new(START, None);
        let short = licence_at(SERIAL, START, 2 * DAY + 5 * HOUR);
        let renewed_at = START + 4 * DAY;
        h.run_until(START + 5 * DAY, |now| if now < renewed_at { Ok(body_of(&short)) } else { Ok(good_body(now)) });
        let lapse = Timestamp::from_secs(short.valid_until) + DAY;
        assert_eq!(lapse, START + 3 * DAY + 5 * HOUR);
        assert_eq!(h.status_changes(), [(START, "licensed"), (lapse, "expired"), (renewed_at, "licensed")]);
    }

    /// Clock skew: a node running 3 days behind accepts a licence "issued in its future"; one
    /// running 12 hours ahead keeps a licence the service considers valid for 6 more hours; the
    /// grace period is the node's own 14 days either way.
    #[test]
    fn skewed_node_clocks() {
        let service_now = START;
        // Behind by 3 days.
        let node_start = ago(service_now, 3 * DAY);
        let mut h = Harness::new(node_start, None);
        h.run_until(node_start, |_| Ok(good_body(service_now)));
        assert_eq!(h.wd.status().name(), "licensed");
        h.run_until(node_start + 20 * DAY, down);
        assert_eq!(h.status_changes().last(), Some(&(node_start + 14 * DAY, "expired")));

        // Ahead by 12 hours, licence ending 6 hours from the service's now.
        let node_start = service_now + 12 * HOUR;
        let ending = licence_at(SERIAL, ago(service_now, 300 * DAY), 300 * DAY + 6 * HOUR);
        let mut h = Harness::new(node_start, None);
        h.run_until(node_start, |_| Ok(body_of(&ending)));
        assert_eq!(h.wd.status().name(), "licensed", "within the tolerance");
        assert_eq!(h.wd.poll_timeout(), Some(service_now + 6 * HOUR + DAY));

        // Ahead by 3 days: a licence the service just issued for 30 days is fine.
        let node_start = service_now + 3 * DAY;
        let mut h = Harness::new(node_start, None);
        h.run_until(node_start, |_| Ok(body_of(&licence_at(SERIAL, service_now, 30 * DAY))));
        assert_eq!(h.wd.status().name(), "licensed");
        h.run_until(node_start + 40 * DAY, |_| Ok(body_of(&licence_at(SERIAL, service_now, 30 * DAY))));
        // It lapses at the service's +30 d plus the tolerance, on the node's clock.
        assert_eq!(h.status_changes(), [(node_start, "licensed"), (service_now + 31 * DAY, "expired")]);
    }

    /// Unlocks add features and limits to a licence in force, and nothing to an unlicensed node.
    #[test]
    fn unlocks_extend_a_licence_but_never_replace_one() {
        let unlocks = Unlocks {
            kind: Kind::Unlocks,
            serial: SERIAL.into(),
            features: [Feature::Cluster].into(),
            limits: Limits { extensions: 50, ..Limits::ZERO },
            release_codes: vec!["R-1".into()],
            issued_at: START.as_secs(),
        };
        let licensed = Effective::licensed(&licence_at(SERIAL, START, DAY)).with_unlocks(&unlocks);
        assert!(licensed.has(Feature::Cluster) && licensed.has(Feature::Conference));
        assert_eq!(licensed.limits.extensions, 250);
        assert_eq!(Effective::unlicensed().with_unlocks(&unlocks), Effective::unlicensed());
    }
}

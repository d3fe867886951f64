//! Voucher sync: fetches the signed [`Unlocks`] (features and limits that redeemed vouchers
//! add) for this serial at start-up and every day, and redeems a voucher code through the
//! licence service when an admin asks (issue "Licence watchdog, voucher sync").
//!
//! Sans-IO: no clock, no I/O, no RNG. The shell performs [`VoucherOutput::Fetch`] and
//! [`VoucherOutput::Redeem`] (HTTPS calls carrying the serial, and the code for a redeem),
//! stores [`VoucherOutput::Persist`], and hands [`VoucherOutput::Redeemed`] to the admin whose
//! request carried the same `token`.
//!
//! - The unlocks are trusted only as a signed envelope verified with the service's key. The
//!   redeem answer (`{"release_code": "…"}`) is not signed: it is shown to the admin, and the
//!   unlocks it grants are fetched (signed) at once after it.
//! - A failed fetch keeps the unlocks held (they carry no expiry: they extend a licence, which
//!   has its own) and is retried after [`VoucherConfig::retry`].
//! - A redeem that succeeds while a fetch is in flight makes another fetch follow that one,
//!   since the one in flight may have been answered before the voucher counted.
//!
//! Not done here: refusing unlocks older than those held (the service signs both).

use super::document::{Envelope, PublicKey, Unlocks};
use super::error::{LicenceServiceError, RedeemError};
use super::watchdog::bounded;
use crate::Timestamp;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// Unlocks are fetched again after this long (the issue: "every 24 h").
pub const FETCH_INTERVAL_S: u64 = 24 * 3600;
/// A failed fetch is retried after this long.
pub const FETCH_RETRY_S: u64 = 3600;
/// Redeem requests waiting for the service at once; more are refused as busy.
pub const REDEEMS_IN_FLIGHT_MAX: usize = 8;
/// Voucher codes are at most this long (after trimming); longer input is not a code.
pub const VOUCHER_CODE_CHARS_MAX: usize = 64;

const _: () = assert!(FETCH_RETRY_S < FETCH_INTERVAL_S);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VoucherConfig {
    pub serial: String,
    pub public_key: PublicKey,
    pub interval: Duration,
    pub retry: Duration,
}

impl VoucherConfig {
    /// The issue's defaults: fetch daily, retry hourly.
    pub fn new(serial: impl Into<String>, public_key: PublicKey) -> VoucherConfig {
        VoucherConfig {
            serial: serial.into(),
            public_key,
            interval: Duration::from_secs(FETCH_INTERVAL_S),
            retry: Duration::from_secs(FETCH_RETRY_S),
        }
    }
}

/// The last unlocks that verified, as the shell stores them; verified again on load.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredUnlocks {
    pub envelope: Envelope,
    pub fetched_at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VoucherInput {
    /// The answer to [`VoucherOutput::Fetch`] `request`: a 200's body or an error text.
    FetchResponse {
        request: u64,
        result: Result<Bytes, LicenceServiceError>,
    },
    /// An admin asks to redeem `code`; the answer is [`VoucherOutput::Redeemed`] with `token`.
    RedeemRequest {
        token: u64,
        code: String,
    },
    /// The answer to [`VoucherOutput::Redeem`] `request`: a 200's body, or the error text the
    /// shell made of the failure ("already redeemed" for 409, "unknown voucher" for 404, …).
    RedeemResponse {
        request: u64,
        result: Result<Bytes, LicenceServiceError>,
    },
    Timeout,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VoucherOutput {
    /// GET this serial's unlocks; answer with [`VoucherInput::FetchResponse`].
    Fetch {
        request: u64,
        serial: String,
    },
    /// POST the code for this serial; answer with [`VoucherInput::RedeemResponse`].
    Redeem {
        request: u64,
        serial: String,
        code: String,
    },
    /// Store this, replacing the last one.
    Persist(StoredUnlocks),
    /// The answer to the admin's [`VoucherInput::RedeemRequest`] `token`: the voucher's release
    /// code, or the reason it was not redeemed.
    Redeemed {
        token: u64,
        result: Result<String, RedeemError>,
    },
    Event(VoucherEvent),
}

/// For logs and metrics. No event carries a voucher code: it is the voucher's value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VoucherEvent {
    Fetched {
        features: usize,
        release_codes: usize,
    },
    FetchFailed {
        reason: String,
        retry_at: Timestamp,
    },
    Redeemed {
        release_code: String,
    },
    RedeemFailed {
        reason: String,
    },
    /// The stored unlocks did not verify at start-up and were ignored.
    StoredIgnored {
        reason: String,
    },
}

/// The redeem answer's body.
#[derive(Deserialize)]
struct RedeemAnswer {
    release_code: String,
}

/// The voucher sync machine.
///
/// Calling contract as for [`super::Watchdog`]: drain [`VoucherSync::poll_output`] after `new`
/// and every `handle`, keep one timer for [`VoucherSync::poll_timeout`], `now` monotonic,
/// and answer every `Fetch` and `Redeem` exactly once.
#[derive(Debug)]
pub struct VoucherSync {
    config: VoucherConfig,
    held: Option<(Unlocks, Timestamp)>,
    last_error: Option<String>,
    next_fetch: Timestamp,
    fetch_in_flight: Option<u64>,
    /// A redeem succeeded while a fetch was in flight: fetch again when it is answered.
    fetch_again: bool,
    /// Redeem request id → the admin's token.
    redeems: BTreeMap<u64, u64>,
    next_request: u64,
    outputs: VecDeque<VoucherOutput>,
}

impl VoucherSync {
    /// A sync whose first fetch is due at `now`; `stored` unlocks count at once if they verify.
    pub fn new(config: VoucherConfig, now: Timestamp, stored: Option<StoredUnlocks>) -> VoucherSync {
        let mut outputs = VecDeque::new();
        let held = stored.and_then(|stored| match stored.envelope.open_unlocks(&config.public_key, &config.serial) {
            Ok(unlocks) => Some((unlocks, stored.fetched_at)),
            Err(refused) => {
                let reason = bounded(&refused.to_string());
                outputs.push_back(VoucherOutput::Event(VoucherEvent::StoredIgnored { reason }));
                None
            }
        });
        VoucherSync {
            config,
            held,
            last_error: None,
            next_fetch: now,
            fetch_in_flight: None,
            fetch_again: false,
            redeems: BTreeMap::new(),
            next_request: 1,
            outputs,
        }
    }

    pub fn handle(&mut self, now: Timestamp, input: VoucherInput) {
        match input {
            VoucherInput::FetchResponse { request, result } => {
                if self.fetch_in_flight == Some(request) {
                    self.fetch_in_flight = None;
                    self.fetched(now, result);
                }
            }
            VoucherInput::RedeemRequest { token, code } => self.redeem(token, &code),
            VoucherInput::RedeemResponse { request, result } => {
                if let Some(token) = self.redeems.remove(&request) {
                    self.redeemed(now, token, result);
                }
            }
            VoucherInput::Timeout => {}
        }
        if self.fetch_in_flight.is_none() && now >= self.next_fetch {
            let request = self.request_id();
            self.fetch_in_flight = Some(request);
            self.outputs.push_back(VoucherOutput::Fetch { request, serial: self.config.serial.clone() });
        }
    }

    pub fn poll_output(&mut self) -> Option<VoucherOutput> {
        self.outputs.pop_front()
    }

    /// The next fetch, unless one is in flight (redeems wait on their answers, not on time).
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.fetch_in_flight.is_none().then_some(self.next_fetch)
    }

    /// The unlocks held (verified), if any.
    pub fn unlocks(&self) -> Option<&Unlocks> {
        self.held.as_ref().map(|(unlocks, _)| unlocks)
    }

    pub fn fetched_at(&self) -> Option<Timestamp> {
        self.held.as_ref().map(|(_, at)| *at)
    }

    /// Why the last fetch failed; `None` once one succeeds.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// When the next fetch is due; `None` while one is in flight.
    pub fn next_fetch(&self) -> Option<Timestamp> {
        self.poll_timeout()
    }

    fn request_id(&mut self) -> u64 {
        let request = self.next_request;
        self.next_request += 1;
        request
    }

    fn fetched(&mut self, now: Timestamp, result: Result<Bytes, LicenceServiceError>) {
        let verified = result.map_err(|e| bounded(&e.to_string())).and_then(|body| {
            let envelope = Envelope::parse(&body).map_err(|r| bounded(&r.to_string()))?;
            let unlocks = envelope
                .open_unlocks(&self.config.public_key, &self.config.serial)
                .map_err(|r| bounded(&r.to_string()))?;
            Ok((unlocks, envelope))
        });
        match verified {
            Ok((unlocks, envelope)) => {
                let event = VoucherEvent::Fetched {
                    features: unlocks.features.len(),
                    release_codes: unlocks.release_codes.len(),
                };
                self.held = Some((unlocks, now));
                self.last_error = None;
                self.next_fetch = now + self.config.interval;
                self.outputs.push_back(VoucherOutput::Persist(StoredUnlocks { envelope, fetched_at: now }));
                self.outputs.push_back(VoucherOutput::Event(event));
            }
            Err(reason) => {
                let retry_at = now + self.config.retry;
                self.last_error = Some(reason.clone());
                self.next_fetch = retry_at;
                self.outputs.push_back(VoucherOutput::Event(VoucherEvent::FetchFailed { reason, retry_at }));
            }
        }
        if std::mem::take(&mut self.fetch_again) {
            self.next_fetch = now;
        }
    }

    fn redeem(&mut self, token: u64, code: &str) {
        let code = code.trim();
        let refusal = if code.is_empty() {
            Some(RedeemError::InvalidCode("empty".to_string()))
        } else if code.chars().count() > VOUCHER_CODE_CHARS_MAX {
            Some(RedeemError::InvalidCode(format!("longer than {VOUCHER_CODE_CHARS_MAX} characters")))
        } else if !code.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            Some(RedeemError::InvalidCode("only letters, digits and '-'".to_string()))
        } else if self.redeems.len() >= REDEEMS_IN_FLIGHT_MAX {
            Some(RedeemError::Busy)
        } else {
            None
        };
        if let Some(refused) = refusal {
            self.outputs.push_back(VoucherOutput::Redeemed { token, result: Err(refused) });
            return;
        }
        let request = self.request_id();
        self.redeems.insert(request, token);
        let serial = self.config.serial.clone();
        self.outputs.push_back(VoucherOutput::Redeem { request, serial, code: code.to_string() });
    }

    fn redeemed(&mut self, now: Timestamp, token: u64, result: Result<Bytes, LicenceServiceError>) {
        let result = match result {
            Err(error) => Err(RedeemError::Service(error)),
            Ok(body) => match serde_json::from_slice::<RedeemAnswer>(&body) {
                Ok(answer) if !answer.release_code.trim().is_empty() => Ok(bounded(answer.release_code.trim())),
                Ok(_) => Err(self.unreadable_redeem(now, "no release code")),
                Err(e) => Err(self.unreadable_redeem(now, &e.to_string())),
            },
        };
        match &result {
            Ok(release_code) => {
                self.fetch_now(now);
                let release_code = release_code.clone();
                self.outputs.push_back(VoucherOutput::Event(VoucherEvent::Redeemed { release_code }));
            }
            Err(refused) => self
                .outputs
                .push_back(VoucherOutput::Event(VoucherEvent::RedeemFailed { reason: bounded(&refused.to_string()) })),
        }
        self.outputs.push_back(VoucherOutput::Redeemed { token, result });
    }

    /// The service said 200 but its answer is unreadable: the voucher may well be redeemed, so
    /// the unlocks are fetched at once and the admin is told to look there.
    fn unreadable_redeem(&mut self, now: Timestamp, why: &str) -> RedeemError {
        self.fetch_now(now);
        RedeemError::Unreadable(bounded(why))
    }

    fn fetch_now(&mut self, now: Timestamp) {
        if self.fetch_in_flight.is_some() {
            self.fetch_again = true;
        } else {
            self.next_fetch = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::licence::document::{Feature, Kind, Licence, Limits, SigningKey};

    const SERIAL: &str = "PBX-0001";
    const HOUR: Duration = Duration::from_secs(3600);
    const DAY: Duration = Duration::from_secs(24 * 3600);
    const START: Timestamp = Timestamp::from_secs(1_767_571_200);

    fn service_key() -> SigningKey {
        SigningKey::from_seed(&[7; 32])
    }

    fn unlocks(codes: &[&str]) -> Unlocks {
        Unlocks {
            kind: Kind::Unlocks,
            serial: SERIAL.into(),
            features: if codes.is_empty() { Default::default() } else { [Feature::Cluster].into() },
            limits: Limits { extensions: 10 * codes.len() as u32, ..Limits::ZERO },
            release_codes: codes.iter().map(|c| c.to_string()).collect(),
            issued_at: START.as_secs(),
        }
    }

    fn body(unlocks: &Unlocks) -> Bytes {
        serde_json::to_vec(&service_key().seal(unlocks)).unwrap().into()
    }

    fn sync(stored: Option<StoredUnlocks>) -> VoucherSync {
        VoucherSync::new(VoucherConfig::new(SERIAL, service_key().public_key()), START, stored)
    }

    fn drain(vs: &mut VoucherSync) -> Vec<VoucherOutput> {
        std::iter::from_fn(|| vs.poll_output()).collect()
    }

    /// The single Fetch among `outputs`, by request id.
    fn fetch_request(outputs: &[VoucherOutput]) -> u64 {
        let fetches: Vec<u64> = outputs
            .iter()
            .filter_map(|o| match o {
                VoucherOutput::Fetch { request, serial } if serial == SERIAL => Some(*request),
                _ => None,
            })
            .collect();
        assert_eq!(fetches.len(), 1, "{outputs:?}");
        fetches[0]
    }

    /// Unlocks are fetched at start, held, persisted, and fetched again 24 h later.
    #[test]
    fn fetches_at_start_and_daily() {
        let mut vs = sync(None);
        assert_eq!(vs.poll_timeout(), Some(START));
        vs.handle(START, VoucherInput::Timeout);
        let request = fetch_request(&drain(&mut vs));
        assert_eq!(vs.poll_timeout(), None);
        vs.handle(START, VoucherInput::FetchResponse { request, result: Ok(body(&unlocks(&["R-1"]))) });
        let out = drain(&mut vs);
        assert_eq!(
            out[0],
            VoucherOutput::Persist(StoredUnlocks {
                envelope: service_key().seal(&unlocks(&["R-1"])),
                fetched_at: START
            })
        );
        assert_eq!(out[1], VoucherOutput::Event(VoucherEvent::Fetched { features: 1, release_codes: 1 }));
        assert_eq!(vs.unlocks(), Some(&unlocks(&["R-1"])));
        assert_eq!(vs.poll_timeout(), Some(START + DAY));
        vs.handle(START + DAY, VoucherInput::Timeout);
        assert_eq!(fetch_request(&drain(&mut vs)), request + 1);
    }

    /// Failed or refused fetches keep the unlocks held and retry hourly.
    #[test]
    fn failed_fetches_keep_unlocks_and_retry_hourly() {
        let stored = StoredUnlocks { envelope: service_key().seal(&unlocks(&["R-1"])), fetched_at: START };
        let mut vs = sync(Some(stored));
        assert_eq!(vs.unlocks(), Some(&unlocks(&["R-1"])), "held from storage before any fetch");
        let mut tampered = service_key().seal(&unlocks(&["R-1", "R-2"]));
        tampered.document = tampered.document.replace("\"R-2\"", "\"R-3\"");
        let licence = Licence {
            kind: Kind::Licence,
            serial: SERIAL.into(),
            features: Default::default(),
            limits: Limits::UNLICENSED,
            issued_at: 0,
            valid_until: u64::MAX / 2,
        };
        let mut other_serial = unlocks(&["R-9"]);
        other_serial.serial = "PBX-2".into();
        let answers: Vec<Result<Bytes, LicenceServiceError>> = vec![
            Err(LicenceServiceError::Status { code: 503, reason: "Service Unavailable".into() }),
            Ok(serde_json::to_vec(&tampered).unwrap().into()),
            Ok(serde_json::to_vec(&service_key().seal(&licence)).unwrap().into()),
            Ok(body(&other_serial)),
            Ok(Bytes::from_static(b"<html>captive portal</html>")),
        ];
        let mut now = START;
        for answer in answers {
            vs.handle(now, VoucherInput::Timeout);
            let request = fetch_request(&drain(&mut vs));
            vs.handle(now, VoucherInput::FetchResponse { request, result: answer });
            let out = drain(&mut vs);
            assert!(
                matches!(&out[..], [VoucherOutput::Event(VoucherEvent::FetchFailed { retry_at, .. })] if *retry_at == now + HOUR),
                "{out:?}"
            );
            assert_eq!(vs.unlocks(), Some(&unlocks(&["R-1"])));
            assert!(vs.last_error().is_some());
            assert_eq!(vs.poll_timeout(), Some(now + HOUR));
            now = now + HOUR;
        }
    }

    /// A redeemed voucher's release code goes to the admin, and the unlocks are fetched at once.
    #[test]
    fn redeem_then_fetch() {
        let mut vs = sync(None);
        vs.handle(START, VoucherInput::Timeout);
        let first = fetch_request(&drain(&mut vs));
        vs.handle(START, VoucherInput::FetchResponse { request: first, result: Ok(body(&unlocks(&[]))) });
        drain(&mut vs);
        let later = START + 5 * HOUR;
        vs.handle(later, VoucherInput::RedeemRequest { token: 41, code: "  ABCD-1234 ".into() });
        let out = drain(&mut vs);
        let [VoucherOutput::Redeem { request, serial, code }] = &out[..] else { panic!("{out:?}") };
        assert_eq!((serial.as_str(), code.as_str()), (SERIAL, "ABCD-1234"));
        let answer = Bytes::from_static(br#"{"release_code": "R-42"}"#);
        vs.handle(later, VoucherInput::RedeemResponse { request: *request, result: Ok(answer) });
        let out = drain(&mut vs);
        assert!(out.contains(&VoucherOutput::Redeemed { token: 41, result: Ok("R-42".into()) }));
        assert!(out.contains(&VoucherOutput::Event(VoucherEvent::Redeemed { release_code: "R-42".into() })));
        let fetch = fetch_request(&out);
        vs.handle(later, VoucherInput::FetchResponse { request: fetch, result: Ok(body(&unlocks(&["R-42"]))) });
        drain(&mut vs);
        assert_eq!(vs.unlocks().unwrap().release_codes, ["R-42"]);
        assert_eq!(vs.poll_timeout(), Some(later + DAY));
    }

    /// A redeem that succeeds while a fetch is in flight makes another fetch follow it.
    #[test]
    fn redeem_during_a_fetch_fetches_again_after_it() {
        let mut vs = sync(None);
        vs.handle(START, VoucherInput::Timeout);
        let first = fetch_request(&drain(&mut vs));
        vs.handle(START, VoucherInput::RedeemRequest { token: 1, code: "V1".into() });
        let [VoucherOutput::Redeem { request, .. }] = drain(&mut vs)[..] else { panic!() };
        vs.handle(START, VoucherInput::RedeemResponse { request, result: Ok(br#"{"release_code":"R-1"}"#[..].into()) });
        let out = drain(&mut vs);
        assert!(!out.iter().any(|o| matches!(o, VoucherOutput::Fetch { .. })), "one fetch in flight at most");
        vs.handle(START, VoucherInput::FetchResponse { request: first, result: Ok(body(&unlocks(&[]))) });
        let out = drain(&mut vs);
        let second = fetch_request(&out);
        vs.handle(START, VoucherInput::FetchResponse { request: second, result: Ok(body(&unlocks(&["R-1"]))) });
        drain(&mut vs);
        assert_eq!(vs.unlocks(), Some(&unlocks(&["R-1"])));
        assert_eq!(vs.poll_timeout(), Some(START + DAY));
    }

    /// The service's refusal reaches the admin as it came; bad codes and overload are refused
    /// without asking the service; nothing is fetched again.
    #[test]
    fn redeem_failures_reach_the_admin() {
        let mut vs = sync(None);
        vs.handle(START, VoucherInput::Timeout);
        let first = fetch_request(&drain(&mut vs));
        vs.handle(START, VoucherInput::FetchResponse { request: first, result: Ok(body(&unlocks(&[]))) });
        drain(&mut vs);

        vs.handle(START, VoucherInput::RedeemRequest { token: 5, code: "USED-1".into() });
        let [VoucherOutput::Redeem { request, .. }] = drain(&mut vs)[..] else { panic!() };
        let refused = LicenceServiceError::AlreadyRedeemed;
        vs.handle(START, VoucherInput::RedeemResponse { request, result: Err(refused.clone()) });
        let out = drain(&mut vs);
        assert_eq!(
            out,
            [
                VoucherOutput::Event(VoucherEvent::RedeemFailed { reason: "already redeemed".into() }),
                VoucherOutput::Redeemed { token: 5, result: Err(RedeemError::Service(refused)) },
            ]
        );
        assert_eq!(vs.poll_timeout(), Some(START + DAY));
        // A duplicate answer for the same request is ignored.
        vs.handle(START, VoucherInput::RedeemResponse { request, result: Ok(br#"{"release_code":"X"}"#[..].into()) });
        assert_eq!(drain(&mut vs), []);

        for (code, why) in [("", "empty"), ("has space", "letters"), (&"A".repeat(65)[..], "longer")] {
            vs.handle(START, VoucherInput::RedeemRequest { token: 6, code: code.into() });
            let out = drain(&mut vs);
            assert!(
                matches!(&out[..], [VoucherOutput::Redeemed { token: 6, result: Err(RedeemError::InvalidCode(e)) }] if e.contains(why)),
                "{out:?}"
            );
        }

        for token in 0..REDEEMS_IN_FLIGHT_MAX as u64 {
            vs.handle(START, VoucherInput::RedeemRequest { token, code: format!("V{token}") });
        }
        assert_eq!(drain(&mut vs).len(), REDEEMS_IN_FLIGHT_MAX);
        vs.handle(START, VoucherInput::RedeemRequest { token: 99, code: "V99".into() });
        let out = drain(&mut vs);
        assert!(matches!(&out[..], [VoucherOutput::Redeemed { token: 99, result: Err(RedeemError::Busy) }]));
    }

    /// A 200 whose body is unreadable: the admin is told to check, and the unlocks are fetched.
    #[test]
    fn unreadable_redeem_answer_fetches_to_find_out() {
        let mut vs = sync(None);
        vs.handle(START, VoucherInput::Timeout);
        let first = fetch_request(&drain(&mut vs));
        vs.handle(
            START,
            VoucherInput::FetchResponse { request: first, result: Err(LicenceServiceError::Transport("down".into())) },
        );
        drain(&mut vs);
        vs.handle(START, VoucherInput::RedeemRequest { token: 3, code: "V3".into() });
        let [VoucherOutput::Redeem { request, .. }] = drain(&mut vs)[..] else { panic!() };
        vs.handle(START, VoucherInput::RedeemResponse { request, result: Ok(Bytes::from_static(b"<html>")) });
        let out = drain(&mut vs);
        assert!(
            out.iter()
                .any(|o| matches!(o, VoucherOutput::Redeemed { token: 3, result: Err(e @ RedeemError::Unreadable(_)) }
                if e.to_string().contains("check the unlocks")))
        );
        fetch_request(&out);
    }

    /// Stored unlocks edited on disk are ignored; a stale fetch answer changes nothing.
    #[test]
    fn tampered_store_and_stale_answers_are_ignored() {
        let mut envelope = service_key().seal(&unlocks(&["R-1"]));
        envelope.document = envelope.document.replace("\"cluster\"", "\"push\"");
        let mut vs = sync(Some(StoredUnlocks { envelope, fetched_at: START }));
        assert_eq!(vs.unlocks(), None);
        assert!(matches!(&drain(&mut vs)[..], [VoucherOutput::Event(VoucherEvent::StoredIgnored { .. })]));
        vs.handle(START, VoucherInput::Timeout);
        let request = fetch_request(&drain(&mut vs));
        vs.handle(START, VoucherInput::FetchResponse { request: request + 10, result: Ok(body(&unlocks(&["R-1"]))) });
        assert_eq!(drain(&mut vs), []);
        assert_eq!(vs.unlocks(), None);
        assert_eq!(vs.poll_timeout(), None, "still waiting for the real answer");
    }
}

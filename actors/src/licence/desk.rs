//! The licence service's desk: what `pbx licence-server` answers, as a sans-IO machine, so the
//! simulator can run the very service the vendor runs (seed: the PBX asks a licence server
//! daily and redeems vouchers at a voucher center; pbx ships that service itself).
//!
//! The desk knows the serials the vendor sold ([`Grant`]) and the vouchers it issued
//! ([`Voucher`]). It answers three requests: a signed [`Licence`] for a serial
//! ([`Desk::check`]), the signed [`Unlocks`] its redeemed vouchers add ([`Desk::unlocks`]), and
//! redeeming a voucher once ([`Desk::redeem`]). Every request is written to a request log
//! (time, client IP, serial, what), which the seed's privacy promise for the vendor's own logs
//! bounds: the IP is anonymised after [`ANONYMISE_AFTER_S`] (14 days; IPv4 to its /24, IPv6 to
//! its /48) and the entry deleted after [`LOG_KEEP_S`] (90 days), or earlier when the log
//! holds [`LOG_ENTRIES_MAX`] entries (the oldest go first).
//!
//! Calling contract (like quinn-proto's `Connection`):
//! - `now` is Unix-epoch microseconds and must not go backwards; the desk clamps it to the
//!   latest `now` it has seen (and the newest logged time it was built with), so the log stays
//!   in time order even if the shell's clock steps back.
//! - After every call (request, admin change, [`Desk::handle_timeout`]) drain
//!   [`Desk::poll_output`] and write every [`DeskOutput::Persist`] durably, in order, *before*
//!   answering the client: then a crash loses nothing a client was told.
//! - Then re-arm one timer for [`Desk::poll_timeout`] and call [`Desk::handle_timeout`] then.
//!
//! Guessing codes online is limited ([`limits`]): failed redeems are charged to a token bucket
//! of their source network and one of their serial; while either is empty, a redeem is
//! refused with [`DeskError::RateLimited`] (the shell answers 429 with `Retry-After`) without
//! looking at the code, and is not written to the request log (a flood of refusals must not
//! cost a durable write each; [`Desk::redeem_stats`] counts them).
//!
//! Voucher codes are secrets until redeemed, so the request log never holds one: it keeps a
//! short keyed hash ([`Desk::code_hash`]), with which the vendor can still tell which voucher a
//! request named. The key is derived from the signing key, so it needs no storage of its own.
//!
//! Deliberately not here: no clock, I/O or RNG (Ed25519 signing is deterministic), no
//! revocation.

use super::document::{Envelope, Feature, Kind, Licence, Limits, SigningKey, Unlocks};
use crate::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

mod limits;

pub use limits::{LimitedBy, RedeemLimits, SERIALS_TRACKED_MAX, SOURCES_TRACKED_MAX, source_key};

/// The seed's promise for the vendor's request logs: client IPs are anonymised after 14 days.
pub const ANONYMISE_AFTER_S: u64 = 14 * 86_400;
/// Anonymised log entries are deleted after 90 days: long enough to see abuse patterns over
/// a quarter, short enough that the log stays small.
pub const LOG_KEEP_S: u64 = 90 * 86_400;
/// Log entries kept at most; past it the oldest are deleted first (a flood must not fill the
/// disk or the memory: about 100 bytes an entry).
pub const LOG_ENTRIES_MAX: usize = 200_000;
/// Serial numbers and voucher codes: 1 to this many characters of `[A-Za-z0-9._-]`.
pub const NAME_CHARS_MAX: usize = 64;
/// Longest licence a grant may ask for: 100 years (keeps `valid_until` far from overflow).
pub const VALID_DAYS_MAX: u32 = 36_500;
const _: () = assert!(ANONYMISE_AFTER_S < LOG_KEEP_S);

/// What the vendor sold one serial: each check issues a licence valid `valid_days` from then.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub features: BTreeSet<Feature>,
    pub limits: Limits,
    pub valid_days: u32,
}

/// Who redeemed a voucher, with which release code, when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redemption {
    pub serial: String,
    pub release_code: String,
    pub at: Timestamp,
}

/// A voucher: redeemed once, it adds its features and limits to that serial's unlocks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Voucher {
    pub code: String,
    pub features: BTreeSet<Feature>,
    /// Added to the licence's limits.
    pub limits: Limits,
    pub redeemed: Option<Redemption>,
}

/// One request, as logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    Licence,
    Unlocks,
    Redeem,
}

/// One entry of the request log. `id` orders entries and keys them in storage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    pub id: u64,
    pub at: Timestamp,
    /// The client's address; after [`ANONYMISE_AFTER_S`] only its /24 (IPv4) or /48 (IPv6).
    pub ip: IpAddr,
    pub anonymised: bool,
    /// As the client sent it (cut to [`NAME_CHARS_MAX`], unprintable characters replaced).
    pub serial: String,
    pub request: Request,
    /// For redeem requests, the keyed hash of the code the client sent ([`Desk::code_hash`]),
    /// never the code.
    pub code_hash: Option<String>,
    /// "ok" or the error.
    pub outcome: String,
}

/// Everything the desk keeps; what the shell loads at start and the persist commands keep.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeskState {
    pub serials: BTreeMap<String, Grant>,
    pub vouchers: BTreeMap<String, Voucher>,
    /// In `id` (and so time) order.
    pub log: VecDeque<LogEntry>,
}

/// A durable change, for the shell to write before it answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeskCommand {
    PutSerial {
        serial: String,
        grant: Grant,
    },
    PutVoucher(Voucher),
    /// A new entry, or an entry rewritten (anonymised) under its id.
    PutLog(LogEntry),
    /// Deletes every log entry with an id below this one.
    RemoveLogBefore {
        id: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeskOutput {
    Persist(DeskCommand),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeskError {
    #[error("unknown serial")]
    UnknownSerial,
    #[error("unknown voucher")]
    UnknownVoucher,
    #[error("voucher already redeemed")]
    AlreadyRedeemed,
    #[error("{0}")]
    Invalid(String),
    /// Too many failed redeems from this source network or for this serial: try again after
    /// `retry_after_s`. `first` is set on the first refusal since the limit last let one in.
    #[error("too many failed redeems for this {}; retry in {retry_after_s} s", by.label())]
    RateLimited { by: LimitedBy, retry_after_s: u64, first: bool },
}

/// What the redeem limits did since the desk was made (not persisted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RedeemStats {
    /// Redeems refused because their source network failed too often.
    pub limited_by_source: u64,
    /// Redeems refused because their serial failed too often.
    pub limited_by_serial: u64,
    /// Source networks and serials with recent failures remembered now.
    pub sources_tracked: usize,
    pub serials_tracked: usize,
}

/// The licence service's logic. See the module doc for the calling contract.
pub struct Desk {
    key: SigningKey,
    /// Keys the code hashes of the request log; derived from `key`.
    log_key: ring::hmac::Key,
    state: DeskState,
    outputs: VecDeque<DeskOutput>,
    latest: Timestamp,
    next_log_id: u64,
    limits: RedeemLimits,
    sources: limits::Buckets<IpAddr>,
    serials: limits::Buckets<String>,
    stats: RedeemStats,
}

impl fmt::Debug for Desk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Desk")
            .field("public_key", &self.key.public_key())
            .field("serials", &self.state.serials.len())
            .field("vouchers", &self.state.vouchers.len())
            .field("log", &self.state.log.len())
            .finish()
    }
}

impl Desk {
    /// A desk signing with `key`, holding `state` as loaded (the log sorted by id here), with
    /// the default [`RedeemLimits`]. Log entries written before codes were hashed get their
    /// code replaced by its hash here, handed out as `Persist` like any change.
    pub fn new(key: SigningKey, mut state: DeskState) -> Desk {
        state.log.make_contiguous().sort_by_key(|e| e.id);
        let latest = state.log.iter().map(|e| e.at).max().unwrap_or_default();
        let next_log_id = state.log.back().map_or(0, |e| e.id + 1);
        // A secret only this key can make: its (deterministic) signature of a fixed text, which
        // nothing else signs (release codes sign "release:…", documents are JSON objects).
        let log_key_seed = key.seal(&"log-key:voucher-codes").signature;
        let log_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, log_key_seed.as_bytes());
        let mut desk = Desk {
            key,
            log_key,
            state,
            outputs: VecDeque::new(),
            latest,
            next_log_id,
            limits: RedeemLimits::default(),
            sources: limits::Buckets::new(SOURCES_TRACKED_MAX),
            serials: limits::Buckets::new(SERIALS_TRACKED_MAX),
            stats: RedeemStats::default(),
        };
        desk.hash_legacy_codes();
        desk
    }

    /// The same desk with other redeem limits.
    pub fn with_redeem_limits(mut self, limits: RedeemLimits) -> Desk {
        self.limits = limits;
        self
    }

    /// Replaces everything the desk holds by `state` as loaded (after a failed write, so memory
    /// claims nothing the disk does not hold), as [`Desk::new`] would, but keeps the redeem
    /// limits and their buckets and counts: who was failing a moment ago still is.
    pub fn reload(&mut self, key: SigningKey, state: DeskState) {
        let mut fresh = Desk::new(key, state).with_redeem_limits(self.limits);
        std::mem::swap(&mut fresh.sources, &mut self.sources);
        std::mem::swap(&mut fresh.serials, &mut self.serials);
        fresh.stats = self.stats;
        *self = fresh;
    }

    pub fn redeem_limits(&self) -> RedeemLimits {
        self.limits
    }

    pub fn redeem_stats(&self) -> RedeemStats {
        RedeemStats { sources_tracked: self.sources.len(), serials_tracked: self.serials.len(), ..self.stats }
    }

    /// A short keyed hash of a voucher code (`#` and 16 hex digits, 64 bits of HMAC-SHA256):
    /// what logs say instead of the code. The same code always gives the same hash under the
    /// same signing key; without the key, a hash says nothing about the code.
    pub fn code_hash(&self, code: &str) -> String {
        let tag = ring::hmac::sign(&self.log_key, code.as_bytes());
        format!("#{}", hex::encode(&tag.as_ref()[..8]))
    }

    pub fn state(&self) -> &DeskState {
        &self.state
    }

    pub fn public_key(&self) -> super::PublicKey {
        self.key.public_key()
    }

    /// The signed licence for `serial`: its grant, issued now, valid `valid_days` from now.
    pub fn check(&mut self, now: Timestamp, ip: IpAddr, serial: &str) -> Result<Envelope, DeskError> {
        let now = self.advance(now);
        let result = self.licence(now, serial);
        self.log(now, ip, serial, Request::Licence, None, &result);
        result
    }

    /// The signed unlocks of every voucher `serial` redeemed: features joined, limits summed,
    /// release codes in the order redeemed.
    pub fn unlocks(&mut self, now: Timestamp, ip: IpAddr, serial: &str) -> Result<Envelope, DeskError> {
        let now = self.advance(now);
        let result = self.sealed_unlocks(now, serial);
        self.log(now, ip, serial, Request::Unlocks, None, &result);
        result
    }

    /// Redeems voucher `code` for `serial`, once: a second redeem, by anyone, is refused. The
    /// release code is derived from the key, the serial and the code, so it proves which serial
    /// redeemed which voucher and needs no randomness.
    ///
    /// While the source network or the serial has failed too often, the redeem is refused with
    /// [`DeskError::RateLimited`] before the code is looked at, and not logged. A failed
    /// redeem is charged to its source network, and to its serial if the desk knows it.
    pub fn redeem(&mut self, now: Timestamp, ip: IpAddr, serial: &str, code: &str) -> Result<String, DeskError> {
        let now = self.advance(now);
        let source = source_key(ip);
        let known = self.state.serials.contains_key(serial);
        self.admit(now, source, serial, known)?;
        let result = self.redeem_voucher(now, serial, code);
        if result.is_err() {
            self.sources.charge(&source, now, secs(self.limits.source_refill_s));
            if known {
                self.serials.charge(&serial.to_string(), now, secs(self.limits.serial_refill_s));
            }
        }
        let hash = self.code_hash(&printable(code));
        self.log(now, ip, serial, Request::Redeem, Some(hash), &result);
        result
    }

    /// Admin: sets what `serial` is granted (creates or replaces).
    pub fn put_serial(&mut self, serial: &str, grant: Grant) -> Result<(), DeskError> {
        validate("serial", serial)?;
        if grant.valid_days == 0 || grant.valid_days > VALID_DAYS_MAX {
            return Err(DeskError::Invalid(format!("valid_days: 1 to {VALID_DAYS_MAX}")));
        }
        self.state.serials.insert(serial.to_string(), grant.clone());
        self.persist(DeskCommand::PutSerial { serial: serial.to_string(), grant });
        Ok(())
    }

    /// Admin: creates or replaces a voucher that is not yet redeemed. A redeemed voucher is
    /// part of a serial's unlocks and stays as it was (`AlreadyRedeemed`).
    pub fn put_voucher(&mut self, voucher: Voucher) -> Result<(), DeskError> {
        validate("voucher code", &voucher.code)?;
        if voucher.redeemed.is_some() {
            return Err(DeskError::Invalid("a new voucher cannot be redeemed already".into()));
        }
        if self.state.vouchers.get(&voucher.code).is_some_and(|v| v.redeemed.is_some()) {
            return Err(DeskError::AlreadyRedeemed);
        }
        self.state.vouchers.insert(voucher.code.clone(), voucher.clone());
        self.persist(DeskCommand::PutVoucher(voucher));
        Ok(())
    }

    /// The next durable change to write, in order.
    pub fn poll_output(&mut self) -> Option<DeskOutput> {
        self.outputs.pop_front()
    }

    /// When the next log entry is due for anonymisation (or deletion).
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let log = &self.state.log;
        let pending = log.partition_point(|e| e.anonymised);
        let anonymise = log.get(pending).map(|e| e.at.saturating_add(secs(ANONYMISE_AFTER_S)));
        let delete = log.front().filter(|e| e.anonymised).map(|e| e.at.saturating_add(secs(LOG_KEEP_S)));
        match (anonymise, delete) {
            (Some(a), Some(d)) => Some(a.min(d)),
            (a, d) => a.or(d),
        }
    }

    /// Anonymises the entries [`ANONYMISE_AFTER_S`] old and deletes those [`LOG_KEEP_S`] old.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        let now = self.advance(now);
        let mut anonymised = Vec::new();
        for entry in self.state.log.iter_mut().skip_while(|e| e.anonymised) {
            if entry.at.saturating_add(secs(ANONYMISE_AFTER_S)) > now {
                break;
            }
            entry.ip = anonymise(entry.ip);
            entry.anonymised = true;
            anonymised.push(entry.clone());
        }
        for entry in anonymised {
            self.persist(DeskCommand::PutLog(entry));
        }
        let expired =
            self.state.log.iter().take_while(|e| e.anonymised && e.at.saturating_add(secs(LOG_KEEP_S)) <= now).count();
        self.drop_oldest(expired);
    }

    /// Whether one more failure of this source network and (if known) serial fits.
    fn admit(&mut self, now: Timestamp, source: IpAddr, serial: &str, known: bool) -> Result<(), DeskError> {
        let l = self.limits;
        let by_source = self.sources.admit(&source, now, l.source_burst, secs(l.source_refill_s));
        let by_serial = if known {
            self.serials.admit(&serial.to_string(), now, l.serial_burst, secs(l.serial_refill_s))
        } else {
            Ok(())
        };
        let refusal = match (by_source, by_serial) {
            (Ok(()), Ok(())) => return Ok(()),
            (Err((wait, first)), Ok(())) => (LimitedBy::Source, wait, first),
            (Ok(()), Err((wait, first))) => (LimitedBy::Serial, wait, first),
            // Both: the longer wait says when a retry can work.
            (Err((a, fa)), Err((b, _))) if a >= b => (LimitedBy::Source, a, fa),
            (Err(_), Err((b, fb))) => (LimitedBy::Serial, b, fb),
        };
        let (by, wait, first) = refusal;
        match by {
            LimitedBy::Source => self.stats.limited_by_source += 1,
            LimitedBy::Serial => self.stats.limited_by_serial += 1,
        }
        // Whole seconds, rounded up: a client waiting that long is let in.
        let retry_after_s = wait.as_micros().div_ceil(1_000_000).max(1) as u64;
        Err(DeskError::RateLimited { by, retry_after_s, first })
    }

    /// Replaces a code a log entry from before hashing holds by its hash.
    fn hash_legacy_codes(&mut self) {
        let is_hash = |c: &str| c.len() == 17 && c.starts_with('#') && c[1..].bytes().all(|b| b.is_ascii_hexdigit());
        let mut rewritten = Vec::new();
        for i in 0..self.state.log.len() {
            let Some(code) = self.state.log[i].code_hash.clone().filter(|c| !is_hash(c)) else { continue };
            let hash = self.code_hash(&code);
            let entry = &mut self.state.log[i];
            entry.code_hash = Some(hash);
            rewritten.push(entry.clone());
        }
        for entry in rewritten {
            self.persist(DeskCommand::PutLog(entry));
        }
    }

    fn advance(&mut self, now: Timestamp) -> Timestamp {
        self.latest = self.latest.max(now);
        self.latest
    }

    fn persist(&mut self, command: DeskCommand) {
        self.outputs.push_back(DeskOutput::Persist(command));
    }

    fn drop_oldest(&mut self, count: usize) {
        if count == 0 {
            return;
        }
        self.state.log.drain(..count);
        let id = self.state.log.front().map_or(self.next_log_id, |e| e.id);
        self.persist(DeskCommand::RemoveLogBefore { id });
    }

    fn licence(&self, now: Timestamp, serial: &str) -> Result<Envelope, DeskError> {
        validate("serial", serial)?;
        let grant = self.state.serials.get(serial).ok_or(DeskError::UnknownSerial)?;
        let issued_at = now.as_secs();
        Ok(self.key.seal(&Licence {
            kind: Kind::Licence,
            serial: serial.to_string(),
            features: grant.features.clone(),
            limits: grant.limits,
            issued_at,
            valid_until: issued_at + u64::from(grant.valid_days) * 86_400,
        }))
    }

    fn sealed_unlocks(&self, now: Timestamp, serial: &str) -> Result<Envelope, DeskError> {
        validate("serial", serial)?;
        if !self.state.serials.contains_key(serial) {
            return Err(DeskError::UnknownSerial);
        }
        let mut redeemed: Vec<(&Redemption, &Voucher)> = self
            .state
            .vouchers
            .values()
            .filter_map(|v| v.redeemed.as_ref().filter(|r| r.serial == serial).map(|r| (r, v)))
            .collect();
        redeemed.sort_by_key(|(r, v)| (r.at, &v.code));
        let mut unlocks = Unlocks {
            kind: Kind::Unlocks,
            serial: serial.to_string(),
            features: BTreeSet::new(),
            limits: Limits::ZERO,
            release_codes: Vec::new(),
            issued_at: now.as_secs(),
        };
        for (redemption, voucher) in redeemed {
            unlocks.features.extend(voucher.features.iter().copied());
            unlocks.limits = unlocks.limits.plus(voucher.limits);
            unlocks.release_codes.push(redemption.release_code.clone());
        }
        Ok(self.key.seal(&unlocks))
    }

    fn redeem_voucher(&mut self, now: Timestamp, serial: &str, code: &str) -> Result<String, DeskError> {
        validate("serial", serial)?;
        validate("voucher code", code)?;
        if !self.state.serials.contains_key(serial) {
            return Err(DeskError::UnknownSerial);
        }
        let voucher = self.state.vouchers.get_mut(code).ok_or(DeskError::UnknownVoucher)?;
        if voucher.redeemed.is_some() {
            return Err(DeskError::AlreadyRedeemed);
        }
        // Ed25519 is deterministic: the same key, serial and code always give the same code.
        let signature = self.key.seal(&format!("release:{serial}:{code}")).signature;
        let release_code = signature[..16].to_string();
        voucher.redeemed = Some(Redemption { serial: serial.to_string(), release_code: release_code.clone(), at: now });
        let stored = voucher.clone();
        self.persist(DeskCommand::PutVoucher(stored));
        Ok(release_code)
    }

    fn log<T>(
        &mut self,
        now: Timestamp,
        ip: IpAddr,
        serial: &str,
        request: Request,
        code_hash: Option<String>,
        result: &Result<T, DeskError>,
    ) {
        if self.state.log.len() >= LOG_ENTRIES_MAX {
            self.drop_oldest(self.state.log.len() + 1 - LOG_ENTRIES_MAX);
        }
        let entry = LogEntry {
            id: self.next_log_id,
            at: now,
            ip: ip.to_canonical(),
            anonymised: false,
            serial: printable(serial),
            request,
            code_hash,
            outcome: match result {
                Ok(_) => "ok".to_string(),
                Err(e) => e.to_string(),
            },
        };
        self.next_log_id += 1;
        self.state.log.push_back(entry.clone());
        self.persist(DeskCommand::PutLog(entry));
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A serial or voucher code: 1 to [`NAME_CHARS_MAX`] characters of `[A-Za-z0-9._-]`.
pub fn validate(what: &str, name: &str) -> Result<(), DeskError> {
    let ok = !name.is_empty()
        && name.len() <= NAME_CHARS_MAX
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(DeskError::Invalid(format!("{what}: 1 to {NAME_CHARS_MAX} characters of A-Z a-z 0-9 . _ -")))
    }
}

/// What the log keeps of a name a client sent: at most [`NAME_CHARS_MAX`] characters, anything
/// outside printable ASCII as `?`.
fn printable(name: &str) -> String {
    name.chars().take(NAME_CHARS_MAX).map(|c| if c.is_ascii_graphic() { c } else { '?' }).collect()
}

/// The address with its host part zeroed: IPv4 to its /24, IPv6 to its /48 (the inventory's
/// rule, [`crate::privacy::anonymise_ip`]).
pub fn anonymise(ip: IpAddr) -> IpAddr {
    crate::privacy::anonymise_ip(ip)
}

#[cfg(test)]
mod tests;

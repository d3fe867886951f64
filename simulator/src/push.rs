//! The push service between pbx and the office's mobile apps (RFC 8599; FCM as the simulation
//! plays it, `[push]` of the workload, [`PushOptions`]): which phones are apps, their tokens,
//! and what becomes of each push the node sends.
//!
//! A push for a token that is void is answered "unregistered". Of the others, a share is
//! answered "unregistered" too — the app's token was just replaced (FCM's `onNewToken`): the
//! app has a new one, which it registers with at its next REGISTER ([`PhoneInput::NewToken`]),
//! and the old one is void from now on. The rest are answered "delivered"; of those a share
//! never reaches the phone (lost), a share reaches it late (seconds: a dozing phone), and the
//! rest within `delivery_ms`. A push reaches a phone only if it is not away then.
//!
//! The service draws from a stream of its own, so the office's other draws do not move when
//! its knobs do.
//!
//! [`PhoneInput::NewToken`]: crate::phone::PhoneInput::NewToken

use crate::node::{PushOutcome, PushSend};
use crate::options::PushOptions;
use rand::Rng;
use rand::rngs::StdRng;
use std::collections::BTreeMap;
use std::time::Duration;

/// The Firebase project the office's app belongs to (its `pn-param`).
pub const PROJECT: &str = "sim-office-app";

/// What became of one push.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fate {
    /// The service answers pbx this much later, so.
    pub answer_after: Duration,
    pub outcome: PushOutcome,
    /// The token's phone, if the token was ever one of the office's.
    pub phone: Option<usize>,
    /// It reaches that phone this long after it was sent.
    pub reaches_after: Option<Duration>,
    /// The phone's new token (its old one was just replaced).
    pub new_token: Option<String>,
}

/// The pushes, for the summary.
#[derive(Clone, Copy, Debug, Default)]
pub struct PushReport {
    /// Phones that are apps.
    pub apps: u64,
    /// Pushes the service got (for calls, and refresh pushes), and its answers.
    pub sent: u64,
    pub refresh: u64,
    pub delivered: u64,
    pub unregistered: u64,
    /// Delivered pushes that never reached their phone, those that reached it late, and those
    /// that reached it (in time or not; not when it was away).
    pub lost: u64,
    pub late: u64,
    pub reached: u64,
}

pub struct PushService {
    options: PushOptions,
    rng: StdRng,
    /// Every token ever issued → its phone; and the valid ones.
    owners: BTreeMap<String, usize>,
    valid: BTreeMap<String, usize>,
    pub report: PushReport,
}

impl PushService {
    pub fn new(options: PushOptions, rng: StdRng) -> PushService {
        PushService { options, rng, owners: BTreeMap::new(), valid: BTreeMap::new(), report: PushReport::default() }
    }

    /// Which of `phones` are apps: `options.phones` of them (rounded), drawn from the seed.
    pub fn choose_apps(&mut self, phones: usize) -> Vec<bool> {
        let count = ((phones as f64) * self.options.phones).round() as usize;
        let mut order: Vec<usize> = (0..phones).collect();
        // A partial Fisher–Yates shuffle: the first `count` are the apps.
        for i in 0..count.min(phones) {
            let j = self.rng.random_range(i..phones);
            order.swap(i, j);
        }
        let mut apps = vec![false; phones];
        for &i in order.iter().take(count) {
            apps[i] = true;
        }
        self.report.apps = count as u64;
        apps
    }

    /// A new token for `phone`'s app (an FCM registration token's shape), valid from now on.
    pub fn issue_token(&mut self, phone: usize) -> String {
        loop {
            let token = format!("{:016x}:APA91b{:016x}", self.rng.random::<u64>(), self.rng.random::<u64>());
            if !self.owners.contains_key(&token) {
                self.owners.insert(token.clone(), phone);
                self.valid.insert(token.clone(), phone);
                return token;
            }
        }
    }

    /// The node sent `push`: what the service answers, and whether and when it reaches the phone.
    pub fn push(&mut self, push: &PushSend) -> Fate {
        let o = &self.options;
        self.report.sent += 1;
        self.report.refresh += u64::from(!push.call);
        let answer_after = millis(&mut self.rng, o.answer_ms);
        let phone = self.owners.get(&push.prid).copied();
        let valid = self.valid.contains_key(&push.prid) && push.provider == "fcm" && push.param == PROJECT;
        let roll: f64 = self.rng.random_range(0.0..1.0);
        if !valid || roll < o.unregistered {
            self.report.unregistered += 1;
            let new_token = self.valid.remove(&push.prid).map(|owner| self.issue_token(owner));
            return Fate { answer_after, outcome: PushOutcome::Unregistered, phone, reaches_after: None, new_token };
        }
        self.report.delivered += 1;
        let reaches_after = if roll < o.unregistered + o.loss {
            self.report.lost += 1;
            None
        } else if self.rng.random_bool(o.late.clamp(0.0, 1.0)) {
            self.report.late += 1;
            let (low, high) = (o.late_s.0 * 1_000, o.late_s.1 * 1_000);
            Some(answer_after + millis(&mut self.rng, (low, high)))
        } else {
            Some(answer_after + millis(&mut self.rng, o.delivery_ms))
        };
        Fate { answer_after, outcome: PushOutcome::Delivered, phone, reaches_after, new_token: None }
    }
}

/// A uniform draw between `low` and `high` milliseconds, at µs resolution.
fn millis(rng: &mut StdRng, (low, high): (u64, u64)) -> Duration {
    let (low, high) = (low.min(high) * 1_000, low.max(high) * 1_000);
    Duration::from_micros(rng.random_range(low..=high))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn send(prid: &str) -> PushSend {
        PushSend {
            id: 1,
            aor: "1000".into(),
            provider: "fcm".into(),
            param: PROJECT.into(),
            prid: prid.into(),
            call: true,
        }
    }

    /// The share of apps is exact; a void token is always unregistered; a replaced token gives
    /// its phone a new one; the outcomes come in about the shares asked for.
    #[test]
    fn pushes_meet_their_fates_in_the_shares_asked_for() {
        let options = PushOptions { phones: 0.25, ..PushOptions::default() };
        let mut service = PushService::new(options.clone(), StdRng::seed_from_u64(1));
        assert_eq!(service.choose_apps(40).iter().filter(|a| **a).count(), 10);
        let token = service.issue_token(3);
        let fate = service.push(&send("no-such-token"));
        assert_eq!((fate.outcome, fate.phone, fate.new_token), (PushOutcome::Unregistered, None, None));
        let (mut current, mut replaced) = (token, 0);
        for _ in 0..10_000 {
            let fate = service.push(&send(&current));
            assert_eq!(fate.phone, Some(3));
            assert!(fate.answer_after <= Duration::from_millis(options.answer_ms.1));
            if let Some(token) = fate.new_token {
                assert_eq!(fate.outcome, PushOutcome::Unregistered);
                assert_eq!(service.push(&send(&current)).outcome, PushOutcome::Unregistered, "void now");
                current = token;
                replaced += 1;
            }
        }
        let r = service.report;
        let share = |n: u64| n as f64 / 10_000.0;
        // Besides the replaced tokens' answers: the first void token's, and each replaced one's.
        assert_eq!(r.unregistered, 2 * replaced + 1, "{r:?}");
        assert!((share(replaced) - 0.02).abs() < 0.01, "{r:?}");
        assert!((share(r.lost) - 0.03).abs() < 0.01, "{r:?}");
        assert!((share(r.late) - 0.03).abs() < 0.01, "{r:?}");
    }
}

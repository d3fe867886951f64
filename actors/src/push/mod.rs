//! Push dispatch (RFC 8599): waking a sleeping mobile softphone so it re-registers and can take
//! a call. A phone that registers with `pn-provider`, `pn-prid` and `pn-param` in its Contact
//! is reached by a push through its provider's gateway (FCM, APNs), and the INVITE waits for
//! the REGISTER the push causes.
//!
//! - [`PushRecord`]: what pbx keeps about each push it sent (category `push-records` of the
//!   data inventory, 7 days): the seed's "Push Notification Service" data — user name, caller
//!   and callee numbers, the app's IP and port, the push token (device id) — and the outcome.

pub mod rfc8599;

use crate::Timestamp;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// Pushes a node's push dispatch has in flight at once (each waits for its provider's answer
/// and, for a call, the phone); beyond it a call's push fails at once and a refresh push is not
/// sent, so a burst cannot grow tasks without bound. The node's dispatch and the simulator's
/// both hold to it.
pub const PUSHES_IN_FLIGHT_MAX: usize = 256;

/// The Contact's media feature tag by which an app says it refreshes its registration on its
/// own, without being pushed (RFC 8599 §4.1.4).
pub const PNSREG_TAG: &str = "+sip.pnsreg";

/// One push request pbx sent to wake a phone (category `push-records`, kept 7 days).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushRecord {
    /// Unique on the node that sent it (with `at`, the record's key).
    pub id: u64,
    /// When the push was sent.
    pub at: Timestamp,
    /// The woken phone's user name: the callee's extension.
    pub user: String,
    /// The calling extension; empty for a refresh push (the app renews its registration).
    pub caller: String,
    /// The number dialled (the callee's extension).
    pub callee: String,
    /// `fcm` or `apns` (RFC 8599 `pn-provider`).
    pub provider: String,
    /// The push token or device id (RFC 8599 `pn-prid`).
    pub device: String,
    /// The app's address when it last registered (IP and port).
    pub source: SocketAddr,
    /// `delivered`, `unregistered` (the token was dropped), or `failed: <reason>`.
    pub outcome: String,
}

impl PushRecord {
    /// Whether the record is about this extension (as the woken user, the caller or the callee).
    pub fn involves(&self, number: &str) -> bool {
        self.user == number || self.caller == number || self.callee == number
    }
}

/// Where push records go (the node stores them like CDRs).
pub trait PushRecordSink: Send + Sync + 'static {
    fn record(&self, record: PushRecord);
}

/// A contact's RFC 8599 parameters (`pn-provider`, `pn-param`, `pn-prid`), as registered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushParams {
    pub provider: String,
    pub param: String,
    pub prid: String,
}

/// What a Contact URI says about push.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushContact {
    /// No `pn-*` parameter: an ordinary phone.
    None,
    /// `pn-provider` alone: the phone asks whether pbx pushes through that provider (RFC 8599
    /// §5): answered with `Feature-Caps`, no binding is made.
    Query { provider: String },
    /// A phone to wake by push before requests reach it.
    Push(PushParams),
}

/// Why a Contact's `pn-*` parameters cannot be used: the REGISTER's final response (400 naming
/// the parameter, or 555 for a provider pbx does not push through).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PushRefusal {
    pub code: u16,
    pub reason: &'static str,
}

impl PushContact {
    /// Reads and checks the `pn-*` URI parameters of `uri` against the providers pbx pushes
    /// through (`providers`: `fcm`, `apns`, `apns.dev`; empty: push is off and the parameters
    /// are not pbx's business, RFC 8599 §4.1: a registrar without push ignores them).
    pub fn of(uri: &crate::sip::message::SipUri, providers: &[String]) -> Result<PushContact, PushRefusal> {
        if providers.is_empty() {
            return Ok(PushContact::None);
        }
        let get = |name: &str| uri.uri_params.get_val(name).map(|v| v.to_string());
        let (provider, param, prid) = (get("pn-provider"), get("pn-param"), get("pn-prid"));
        let bad = |reason| Err(PushRefusal { code: 400, reason });
        let Some(provider) = provider else {
            return match (param, prid) {
                (None, None) => Ok(PushContact::None),
                _ => bad("Bad pn-provider: missing beside pn-param or pn-prid"),
            };
        };
        if !providers.iter().any(|p| p.eq_ignore_ascii_case(&provider)) {
            return Err(PushRefusal { code: 555, reason: "Push Notification Service Not Supported" });
        }
        let Some(prid) = prid else {
            return match param {
                None => Ok(PushContact::Query { provider: provider.to_ascii_lowercase() }),
                Some(_) => bad("Bad pn-prid: missing"),
            };
        };
        let Some(param) = param else { return bad("Bad pn-param: missing") };
        match rfc8599::parse(&provider, &param, &prid) {
            Ok(_) => Ok(PushContact::Push(PushParams { provider: provider.to_ascii_lowercase(), param, prid })),
            Err(error) => bad(refusal_reason(&error)),
        }
    }

    /// The push parameters of a registered contact (checked when it registered).
    pub fn params_of(contact: &str) -> Option<PushParams> {
        let uri = crate::sip::message::parse_sip_uri(contact)?;
        let get = |name: &str| uri.uri_params.get_val(name).map(|v| v.to_string());
        Some(PushParams {
            provider: get("pn-provider")?.to_ascii_lowercase(),
            param: get("pn-param")?,
            prid: get("pn-prid")?,
        })
    }
}

/// The 400's reason phrase for a parameter RFC 8599 cannot read: it names the parameter.
fn refusal_reason(error: &rfc8599::Rfc8599Error) -> &'static str {
    use rfc8599::Rfc8599Error as E;
    match error {
        E::Provider(_) => "Bad pn-provider",
        E::Empty("pn-param") | E::TooLong("pn-param") | E::Escape("pn-param") | E::ApnsParam(_) => "Bad pn-param",
        E::Empty("pn-provider") | E::TooLong("pn-provider") | E::Escape("pn-provider") => "Bad pn-provider",
        E::Empty(_) | E::TooLong(_) | E::Escape(_) | E::ApnsToken(_) | E::Service(_) | E::Ambiguous(_) => "Bad pn-prid",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::parse_sip_uri;

    fn of(uri: &str) -> Result<PushContact, PushRefusal> {
        PushContact::of(&parse_sip_uri(uri).unwrap(), &["fcm".into(), "apns".into()])
    }

    /// The forms phones send are read; each malformed one is refused naming its parameter; an
    /// unknown provider is 555; with push off nothing is checked.
    #[test]
    fn contacts_with_push_parameters() {
        assert_eq!(of("sip:101@192.0.2.1:5060"), Ok(PushContact::None));
        let fcm = of("sip:101@192.0.2.1:5060;pn-provider=fcm;pn-param=proj-1;pn-prid=tok:en-1").unwrap();
        assert!(matches!(&fcm, PushContact::Push(p) if p.provider == "fcm" && p.prid == "tok:en-1"), "{fcm:?}");
        let apns = "sip:101@192.0.2.1;pn-provider=apns;pn-param=ABCD1234.org.example.app.voip;pn-prid=00fa";
        assert!(matches!(of(apns), Ok(PushContact::Push(_))));
        assert_eq!(of("sip:101@192.0.2.1;pn-provider=fcm"), Ok(PushContact::Query { provider: "fcm".into() }));
        let reason = |uri: &str| of(uri).unwrap_err();
        assert_eq!(reason("sip:101@h;pn-provider=webpush;pn-prid=x;pn-param=y").code, 555);
        assert_eq!(reason("sip:101@h;pn-prid=x").reason, "Bad pn-provider: missing beside pn-param or pn-prid");
        assert_eq!(reason("sip:101@h;pn-provider=fcm;pn-prid=x").reason, "Bad pn-param: missing");
        assert_eq!(reason("sip:101@h;pn-provider=fcm;pn-param=p").reason, "Bad pn-prid: missing");
        assert_eq!(reason("sip:101@h;pn-provider=apns;pn-param=nodot;pn-prid=00").reason, "Bad pn-param");
        assert_eq!(reason("sip:101@h;pn-provider=apns;pn-param=T.a.b;pn-prid=zz").reason, "Bad pn-prid");
        let off = PushContact::of(&parse_sip_uri("sip:101@h;pn-provider=webpush").unwrap(), &[]);
        assert_eq!(off, Ok(PushContact::None));
        let params = PushContact::params_of("sip:101@192.0.2.1;pn-provider=FCM;pn-param=p;pn-prid=t").unwrap();
        assert_eq!((params.provider.as_str(), params.param.as_str(), params.prid.as_str()), ("fcm", "p", "t"));
    }
}

//! Where a push goes, read from the SIP URI parameters a phone registers with (RFC 8599 §4.1:
//! `pn-provider`, `pn-param`, `pn-prid`), in the forms RFC 8599 §9 (APNs), §10 (FCM) and the
//! Linphone apps use:
//!
//! - FCM (`pn-provider=fcm`): `pn-param` is the Firebase project (RFC 8599 §10.2 says the
//!   project ID; Linphone sends the sender ID, the project's number), `pn-prid` the
//!   registration token, taken whole (FCM tokens contain `:`).
//! - APNs (`pn-provider=apns`, Linphone's `apns.dev` for Apple's sandbox): `pn-param` is the
//!   App ID prefix (the team ID), a dot, and the topic (RFC 8599 §9.2), e.g.
//!   `ABCD1234.org.example.app.voip`. Linphone ends it with the services the app takes, joined
//!   by `&` (`ABCD1234.org.linphone.phone.voip&remote`), and gives one token per service in
//!   `pn-prid`: `<voip-token>:voip&<remote-token>:remote`. A `pn-param` without a service label
//!   (`ABCD1234.org.example.app`) names the alert topic, RFC 8599's plain form.
//!
//! Values are percent-decoded once (`%26` is `&`, `%3A` is `:`). Not here: the SIP parsing
//! itself (the registrar hands the three values over), `pn-purr` and the `pn-*` Feature-Caps of
//! RFC 8599 §5, other providers (`webpush`).

/// The longest `pn-*` value read: FCM tokens are ~160 characters, Linphone's two APNs tokens
/// and their labels under 150.
pub const PN_VALUE_BYTES_MAX: usize = 1_024;

/// One APNs device token at most: 32 bytes today (64 hex digits), Apple warns it may grow.
pub const APNS_TOKEN_HEX_MAX: usize = 200;

/// A phone's push destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushTarget {
    /// `pn-provider=fcm`.
    Fcm(FcmTarget),
    /// `pn-provider=apns` or `apns.dev`.
    Apns(ApnsTarget),
}

/// An Android (or any FCM) app instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FcmTarget {
    /// `pn-param`: the project ID or sender ID the token belongs to.
    pub project: String,
    /// `pn-prid`: the registration token.
    pub token: String,
}

/// An iOS app instance: its tokens per push type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApnsTarget {
    /// The App ID prefix before the first dot of `pn-param` (the team ID for most apps).
    pub team_id: String,
    /// The app's bundle ID: the topic of alert pushes; VoIP pushes use `<bundle>.voip`.
    pub bundle_id: String,
    /// `pn-provider=apns.dev` (Linphone): Apple's sandbox, for development builds.
    pub sandbox: bool,
    /// The PushKit token (`:voip`): what wakes the app for a call.
    pub voip_token: Option<String>,
    /// The user-notification token (`:remote`): alert pushes (a missed call, a message).
    pub remote_token: Option<String>,
}

impl ApnsTarget {
    /// `apns-topic` of a VoIP push: the bundle ID with `.voip` (Apple's PushKit rule).
    pub fn voip_topic(&self) -> String {
        format!("{}.voip", self.bundle_id)
    }
}

/// Why the parameters name no push destination.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rfc8599Error {
    #[error("pn-provider {0:?} is not one pbx sends to (fcm, apns, apns.dev)")]
    Provider(String),
    #[error("{0} is empty")]
    Empty(&'static str),
    #[error("{0} is longer than {PN_VALUE_BYTES_MAX} bytes")]
    TooLong(&'static str),
    #[error("{0} has a bad percent escape")]
    Escape(&'static str),
    #[error("pn-param {0:?} is not <team>.<bundle>[.<services>]")]
    ApnsParam(String),
    #[error("pn-prid token {0:?} is not hex (an APNs device token)")]
    ApnsToken(String),
    #[error("pn-prid names the service {0:?}, not one of voip, remote")]
    Service(String),
    #[error("pn-prid has a token without a service but pn-param lists several ({0})")]
    Ambiguous(String),
}

/// The destination the three `pn-*` values name.
pub fn parse(provider: &str, param: &str, prid: &str) -> Result<PushTarget, Rfc8599Error> {
    let provider = decoded("pn-provider", provider)?.to_ascii_lowercase();
    let param = decoded("pn-param", param)?;
    let prid = decoded("pn-prid", prid)?;
    match provider.as_str() {
        "fcm" => Ok(PushTarget::Fcm(FcmTarget { project: param, token: prid })),
        "apns" | "apns.dev" => apns(&param, &prid, provider == "apns.dev").map(PushTarget::Apns),
        _ => Err(Rfc8599Error::Provider(provider)),
    }
}

/// The service labels Linphone puts after the bundle ID and after each token.
const SERVICES: [&str; 2] = ["voip", "remote"];

fn apns(param: &str, prid: &str, sandbox: bool) -> Result<ApnsTarget, Rfc8599Error> {
    let bad_param = || Rfc8599Error::ApnsParam(param.to_string());
    let (team_id, topic) = param.split_once('.').ok_or_else(bad_param)?;
    if team_id.is_empty() || !team_id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(bad_param());
    }
    // `org.example.app.voip&remote`: the last label lists services when every part is one.
    let (bundle_id, services): (&str, Vec<&str>) = match topic.rsplit_once('.') {
        Some((bundle, last)) if last.split('&').all(|s| SERVICES.contains(&s)) => (bundle, last.split('&').collect()),
        _ => (topic, vec!["remote"]),
    };
    let bundle_ok = |b: &str| !b.is_empty() && b.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
    if !bundle_ok(bundle_id) || bundle_id.starts_with('.') || bundle_id.ends_with('.') {
        return Err(bad_param());
    }
    let mut target = ApnsTarget {
        team_id: team_id.to_string(),
        bundle_id: bundle_id.to_string(),
        sandbox,
        voip_token: None,
        remote_token: None,
    };
    for part in prid.split('&') {
        let (token, service) = match part.rsplit_once(':') {
            Some((token, service)) => (token, service),
            None if services.len() == 1 => (part, services[0]),
            None => return Err(Rfc8599Error::Ambiguous(services.join("&"))),
        };
        let hex_ok =
            !token.is_empty() && token.len() <= APNS_TOKEN_HEX_MAX && token.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex_ok {
            return Err(Rfc8599Error::ApnsToken(token.to_string()));
        }
        match service {
            "voip" => target.voip_token = Some(token.to_string()),
            "remote" => target.remote_token = Some(token.to_string()),
            other => return Err(Rfc8599Error::Service(other.to_string())),
        }
    }
    Ok(target)
}

/// `value` percent-decoded, bounded, non-empty.
fn decoded(name: &'static str, value: &str) -> Result<String, Rfc8599Error> {
    if value.len() > PN_VALUE_BYTES_MAX {
        return Err(Rfc8599Error::TooLong(name));
    }
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            let byte = hex.and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or(Rfc8599Error::Escape(name))?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let text = String::from_utf8(out).map_err(|_| Rfc8599Error::Escape(name))?;
    let text = text.trim().to_string();
    if text.is_empty() {
        return Err(Rfc8599Error::Empty(name));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VOIP: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
    const REMOTE: &str = "0f0e0d0c0b0a09080706050403020100ffeeddccbbaa99887766554433221100";

    fn apns_target(provider: &str, param: &str, prid: &str) -> ApnsTarget {
        match parse(provider, param, prid).unwrap() {
            PushTarget::Apns(t) => t,
            other => panic!("{other:?}"),
        }
    }

    // Proves RFC 8599 §9's form: team, bundle, and the `.voip` service of one untyped token.
    #[test]
    fn rfc8599_apns_voip() {
        let t = apns_target("apns", "ABCD1234.org.example.app.voip", VOIP);
        assert_eq!((t.team_id.as_str(), t.bundle_id.as_str(), t.sandbox), ("ABCD1234", "org.example.app", false));
        assert_eq!((t.voip_token.as_deref(), t.remote_token.as_deref()), (Some(VOIP), None));
        assert_eq!(t.voip_topic(), "org.example.app.voip");
    }

    // Proves Linphone's form: services joined by `&`, one typed token each, escapes decoded,
    // `apns.dev` as the sandbox.
    #[test]
    fn linphone_apns_two_tokens() {
        let prid = format!("{VOIP}:voip&{REMOTE}:remote");
        let t = apns_target("APNS.dev", "ABCD1234.org.linphone.phone.voip&remote", &prid);
        assert_eq!((t.bundle_id.as_str(), t.sandbox), ("org.linphone.phone", true));
        assert_eq!((t.voip_token.as_deref(), t.remote_token.as_deref()), (Some(VOIP), Some(REMOTE)));
        let escaped = format!("{VOIP}%3Avoip%26{REMOTE}%3Aremote");
        assert_eq!(apns_target("apns.dev", "ABCD1234.org.linphone.phone.voip%26remote", &escaped), t);
    }

    // Proves a pn-param without a service label is the alert topic (the bundle itself).
    #[test]
    fn plain_topic_is_remote() {
        let t = apns_target("apns", "ABCD1234.org.example.app", REMOTE);
        assert_eq!(
            (t.bundle_id.as_str(), t.remote_token.as_deref(), t.voip_token),
            ("org.example.app", Some(REMOTE), None)
        );
    }

    // Proves FCM tokens are taken whole, colons included, and the project is pn-param.
    #[test]
    fn fcm_token_whole() {
        let token = "cXyZ:APA91bH-abc_def";
        assert_eq!(
            parse("fcm", "pbx-test", token).unwrap(),
            PushTarget::Fcm(FcmTarget { project: "pbx-test".into(), token: token.into() })
        );
    }

    // Proves each malformed input is refused with its reason.
    #[test]
    fn malformed_inputs_are_named() {
        assert_eq!(parse("webpush", "x", "y"), Err(Rfc8599Error::Provider("webpush".into())));
        assert_eq!(parse("fcm", "", "y"), Err(Rfc8599Error::Empty("pn-param")));
        assert_eq!(parse("fcm", "p", "%4"), Err(Rfc8599Error::Escape("pn-prid")));
        assert_eq!(parse("fcm", "p", &"a".repeat(PN_VALUE_BYTES_MAX + 1)), Err(Rfc8599Error::TooLong("pn-prid")));
        assert!(matches!(parse("apns", "nodot", VOIP), Err(Rfc8599Error::ApnsParam(_))));
        assert!(matches!(parse("apns", "AB CD.org.x.voip", VOIP), Err(Rfc8599Error::ApnsParam(_))));
        assert!(matches!(parse("apns", "ABCD.org.x.voip", "zz"), Err(Rfc8599Error::ApnsToken(_))));
        assert_eq!(parse("apns", "ABCD.org.x.voip", &format!("{VOIP}:fax")), Err(Rfc8599Error::Service("fax".into())));
        assert_eq!(parse("apns", "ABCD.org.x.voip&remote", VOIP), Err(Rfc8599Error::Ambiguous("voip&remote".into())));
    }
}

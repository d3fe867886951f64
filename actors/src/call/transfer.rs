//! Call transfer (RFC 3515 REFER, RFC 5589): what a transfer request names, read and checked.
//!
//! A party of an answered call sends REFER in its dialog with pbx. pbx, the B2BUA, carries
//! out the transfer itself (the other party never sees the REFER): it looks the target up as
//! if the transferee had dialled it, rings it, and when it answers joins the transferee to it
//! and hangs up on the transferor (`b2bua`, "Transfer"). What this module does is the part a
//! stranger controls: the `Refer-To` header.
//!
//! Accepted: a `sip:` or `sips:` URI whose host is pbx — its SIP address, or the host the
//! phone itself names pbx by in this dialog — and whose user part is a number (digits, `*`,
//! `#`, `+`). Refused with 403 and a reason phrase: another scheme (`tel:`, `http:`), another
//! host (pbx is no open relay: a transfer never makes pbx call out to an address a phone
//! names), no or a malformed number. A `sips:` target (RFC 5630: every hop over TLS) is
//! only rung at its phones on TLS, so it cannot be downgraded. URI parameters are ignored
//! (pbx routes by number, over the transport each phone registered with); of the embedded
//! headers only `Replaces` (RFC 3891, attended transfer) is read.

use crate::sip::message::percent_decode;
pub use crate::sip::replaces::{Replaces, parse_replaces};

/// Longest `Refer-To` value read; longer is refused.
pub const REFER_TO_MAX: usize = 1024;
/// Longest number in a `Refer-To`.
const NUMBER_MAX: usize = 32;

/// A transfer's target, as the `Refer-To` names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReferTo {
    /// The number to transfer to (the URI's user part, unescaped).
    pub number: String,
    /// A `sips:` URI: only phones on TLS may be rung.
    pub secure: bool,
    /// Attended transfer: the dialog the target is already in with the transferor.
    pub replaces: Option<Replaces>,
}

/// Why a `Refer-To` is refused: the 403's reason phrase.
pub type Refusal = &'static str;

/// Reads a `Refer-To` value (`name-addr` or `addr-spec`); `own_hosts` are the hosts that name
/// pbx (compared without case, brackets or port).
pub fn parse_refer_to(value: &str, own_hosts: &[String]) -> Result<ReferTo, Refusal> {
    if value.len() > REFER_TO_MAX {
        return Err("Forbidden (Refer-To too long)");
    }
    let value = value.trim();
    let uri = match (value.find('<'), value.rfind('>')) {
        (Some(open), Some(close)) if open < close => &value[open + 1..close],
        (None, None) => value.split(';').next().unwrap_or_default(),
        _ => return Err("Forbidden (malformed Refer-To)"),
    };
    let (scheme, rest) = uri.split_once(':').ok_or("Forbidden (Refer-To is not a SIP URI)")?;
    let secure = match scheme.to_ascii_lowercase().as_str() {
        "sip" => false,
        "sips" => true,
        _ => return Err("Forbidden (Refer-To is not a SIP URI)"),
    };
    let (rest, headers) = match rest.split_once('?') {
        Some((rest, headers)) => (rest, Some(headers)),
        None => (rest, None),
    };
    let address = rest.split(';').next().unwrap_or_default();
    let (user, host_port) = address.rsplit_once('@').ok_or("Forbidden (Refer-To names no number)")?;
    let number = percent_decode(user).ok_or("Forbidden (malformed number in Refer-To)")?;
    let number_ok = !number.is_empty()
        && number.len() <= NUMBER_MAX
        && number.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'*' | b'#' | b'+'));
    if !number_ok {
        return Err("Forbidden (Refer-To names no number)");
    }
    let host = host_of(host_port).ok_or("Forbidden (malformed host in Refer-To)")?;
    if !own_hosts.iter().any(|own| host.eq_ignore_ascii_case(host_of(own).unwrap_or(own))) {
        return Err("Forbidden (Refer-To names another host)");
    }
    let mut replaces = None;
    for header in headers.into_iter().flat_map(|h| h.split('&')) {
        let (name, value) = header.split_once('=').unwrap_or((header, ""));
        if name.eq_ignore_ascii_case("replaces") {
            let value = percent_decode(value).ok_or("Forbidden (malformed Replaces in Refer-To)")?;
            replaces = Some(parse_replaces(&value).ok_or("Forbidden (malformed Replaces in Refer-To)")?);
        }
    }
    Ok(ReferTo { number, secure, replaces })
}

/// A host without port or IPv6 brackets; `None` when empty.
fn host_of(host_port: &str) -> Option<&str> {
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => host_port.split(':').next()?,
    };
    (!host.is_empty()).then_some(host)
}

/// The `message/sipfrag` body of a transfer's NOTIFY (RFC 3515 §2.4.5): the status line of
/// how the call to the target is going.
pub fn sipfrag(code: u16, reason: &str) -> String {
    format!("SIP/2.0 {code} {reason}\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own() -> Vec<String> {
        vec!["127.0.0.1".into(), "pbx.example.com".into()]
    }

    #[test]
    fn a_plain_target_is_its_number() {
        let r = parse_refer_to("<sip:102@127.0.0.1:5060>", &own()).unwrap();
        assert_eq!(r, ReferTo { number: "102".into(), secure: false, replaces: None });
        let r = parse_refer_to("\"Bob\" <sips:102@PBX.example.com;transport=tls>", &own()).unwrap();
        assert_eq!((r.number.as_str(), r.secure), ("102", true));
        assert_eq!(parse_refer_to("sip:*80102@127.0.0.1", &own()).unwrap().number, "*80102");
        assert_eq!(parse_refer_to("sip:%2A21%2A102%23@127.0.0.1", &own()).unwrap().number, "*21*102#");
    }

    #[test]
    fn strangers_targets_are_refused_with_a_reason() {
        for (value, reason) in [
            ("<sip:102@evil.example.net>", "another host"),
            ("<sip:102@10.0.0.9:5060>", "another host"),
            ("<tel:+4930123456>", "not a SIP URI"),
            ("<http://127.0.0.1/>", "not a SIP URI"),
            ("<sip:127.0.0.1>", "no number"),
            ("<sip:bob@127.0.0.1>", "no number"),
            ("<sip:10%2@127.0.0.1>", "malformed number"),
            ("<sip:102@127.0.0.1", "malformed Refer-To"),
            ("<sip:102@127.0.0.1?Replaces=abc>", "malformed Replaces"),
        ] {
            let refused = parse_refer_to(value, &own()).unwrap_err();
            assert!(refused.contains(reason), "{value}: {refused}");
        }
        let long = format!("<sip:{}@127.0.0.1>", "1".repeat(REFER_TO_MAX));
        assert!(parse_refer_to(&long, &own()).is_err());
    }

    #[test]
    fn replaces_is_read_from_the_uri_headers() {
        let r = parse_refer_to(
            "<sip:102@127.0.0.1?Replaces=abc%40host%3Bto-tag%3D11%3Bfrom-tag%3D22&Require=replaces>",
            &own(),
        )
        .unwrap();
        let expected = Replaces { call_id: "abc@host".into(), to_tag: "11".into(), from_tag: "22".into() };
        assert_eq!(r.replaces, Some(expected));
        assert_eq!(parse_replaces("x;from-tag=1;to-tag=2;early-only").unwrap().to_tag, "2");
        assert_eq!(parse_replaces("x;to-tag=2"), None);
    }
}

//! Via, From, To, Contact and SIP URIs in their common shapes, read by hand: a phone's request carries
//! `SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK…;rport` and `"Alice" <sip:alice@example.com>;tag=…`,
//! which ezk's nom grammar reads several times slower than a scan does.
//!
//! Each reader answers `None` for anything outside the shapes it knows (whitespace inside the
//! value, percent escapes, quoted parameter values, a password, URI headers, IPv6, non-ASCII,
//! anything left over at the end) and the caller then asks ezk. Where a reader does answer, its
//! value is the one ezk's grammar gives for the same text: the tests compare the two on every
//! shape and on many mutations of them.

use super::trim_sp_start;
use bytes::Bytes;
use bytesstr::BytesStr;
use ezk_sip_types::header::typed::{Contact, FromTo, Via};
use ezk_sip_types::host::{Host, HostPort};
use ezk_sip_types::uri::params::{CPS, Param, Params};
use ezk_sip_types::uri::{NameAddr, SipUri, SipUriUserPart};
use std::net::Ipv4Addr;

/// One Via value in the common shape: `SIP/2.0/<transport> <host>[:<port>][;params]`.
pub(super) fn via(src: &Bytes, value: &str) -> Option<Via> {
    let rest = value.strip_prefix("SIP/2.0/")?;
    let transport_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
    let (transport, rest) = rest.split_at(transport_len);
    if transport.is_empty() {
        return None;
    }
    let rest = trim_sp_start(rest);
    if rest.len() + transport.len() + 8 == value.len() {
        return None; // no whitespace between transport and sent-by
    }
    let (sent_by, rest) = host_port(src, rest)?;
    let (params, rest) = params(src, rest, b"")?;
    if !rest.is_empty() {
        return None;
    }
    Some(Via { transport: BytesStr::from_parse(src, transport), sent_by, params })
}

/// One From or To value in the common shapes: `<uri>[;params]`, `"Name" <uri>[;params]` and
/// `Name <uri>[;params]` (a display name of letters, digits, spaces and `-_.`).
pub(super) fn from_to(src: &Bytes, value: &str) -> Option<FromTo> {
    let (uri, mut params) = name_addr_params(src, value)?;
    let tag = params.take("tag");
    Some(FromTo { uri, tag, params })
}

/// One Contact value (a single contact, no comma list) in the shapes of [`from_to`].
pub(super) fn contact(src: &Bytes, value: &str) -> Option<Contact> {
    let (uri, params) = name_addr_params(src, value)?;
    Some(Contact { uri, params })
}

/// `[display name] <uri>[;params]`, all of `value`.
fn name_addr_params(src: &Bytes, value: &str) -> Option<(NameAddr, Params<CPS>)> {
    let (name, rest) = display_name(src, value)?;
    let rest = rest.strip_prefix('<')?;
    let (uri, rest) = sip_uri(src, rest)?;
    let rest = rest.strip_prefix('>')?;
    let (params, rest) = params(src, rest, b"")?;
    if !rest.is_empty() {
        return None;
    }
    Some((NameAddr { name, uri }, params))
}

/// The display name before `<`, as ezk reads it: a quoted string's inner text, or the text
/// before `<`, trimmed either way; `None` (for the whole value) when it is not a simple one.
fn display_name<'i>(src: &Bytes, value: &'i str) -> Option<(Option<BytesStr>, &'i str)> {
    if value.starts_with('<') {
        return Some((None, value));
    }
    if let Some(quoted) = value.strip_prefix('"') {
        let end = quoted.find('"')?;
        let inner = &quoted[..end];
        if inner.is_empty() || inner.contains('\\') {
            return None;
        }
        let rest = trim_sp_start(&quoted[end + 1..]);
        return Some((Some(BytesStr::from_parse(src, inner.trim())), rest));
    }
    let end = value.find('<')?;
    let name = &value[..end];
    let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b' ' | b'-' | b'_' | b'.');
    if !name.bytes().all(plain) || name.trim().is_empty() {
        return None;
    }
    Some((Some(BytesStr::from_parse(src, name.trim())), &value[end..]))
}

/// A whole text that is one SIP URI in the common shape (a Request-URI, a stored Contact).
pub(super) fn whole_sip_uri(src: &Bytes, text: &str) -> Option<SipUri> {
    match sip_uri(src, text)? {
        (uri, "") => Some(uri),
        _ => None,
    }
}

/// `sip:`/`sips:`, an optional user and `@`, host, port and URI parameters (no `?` headers):
/// the URI and what follows it.
fn sip_uri<'i>(src: &Bytes, text: &'i str) -> Option<(SipUri, &'i str)> {
    let (sips, rest) = if text.get(..5).is_some_and(|s| s.eq_ignore_ascii_case("sips:")) {
        (true, &text[5..])
    } else if text.get(..4).is_some_and(|s| s.eq_ignore_ascii_case("sip:")) {
        (false, &text[4..])
    } else {
        return None;
    };
    // ezk takes user characters greedily, then wants `@` (or `:` and a password); without
    // either there is no user part and the host starts at the beginning.
    let user_len = rest.bytes().take_while(|&b| is_user_byte(b)).count();
    let (user_part, rest) = match rest.as_bytes().get(user_len) {
        Some(b'@') => (SipUriUserPart::User(BytesStr::from_parse(src, &rest[..user_len])), &rest[user_len + 1..]),
        Some(b':') => {
            // `host:port`, unless a password and `@` follow (that shape is ezk's).
            let after = &rest.as_bytes()[user_len + 1..];
            match after.iter().find(|&&b| !is_password_byte(b)) {
                Some(b'@') => return None,
                Some(b) if !b.is_ascii() => return None,
                _ => (SipUriUserPart::Empty, rest),
            }
        }
        Some(b'%') => return None,
        Some(b) if !b.is_ascii() => return None,
        _ => (SipUriUserPart::Empty, rest),
    };
    let (host_port, rest) = host_port(src, rest)?;
    let (uri_params, rest) = params(src, rest, b">")?;
    if rest.starts_with('?') {
        return None;
    }
    Some((SipUri { sips, user_part, host_port, uri_params, header_params: Params::new() }, rest))
}

/// A host (an IPv4 address or a name that starts with a letter) and an optional port.
fn host_port<'i>(src: &Bytes, text: &'i str) -> Option<(HostPort, &'i str)> {
    let len = text.bytes().take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-')).count();
    let (name, rest) = text.split_at(len);
    let first = *name.as_bytes().first()?;
    let host = if first.is_ascii_digit() {
        // ezk tries IPv4 first (and for a name starting with a digit may read only a prefix
        // as one): only a plain dotted quad is read here.
        if !name.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return None;
        }
        Host::IP4(plain_ipv4(name)?)
    } else if first.is_ascii_alphabetic() {
        // label *("." label) ["."]
        if !name.strip_suffix('.').unwrap_or(name).as_bytes().split(|&b| b == b'.').all(is_label) {
            return None;
        }
        Host::Name(BytesStr::from_parse(src, name))
    } else {
        return None;
    };
    let (port, rest) = match rest.strip_prefix(':') {
        Some(after) => {
            let digits = after.bytes().take_while(u8::is_ascii_digit).count();
            if !(1..=5).contains(&digits) {
                return None;
            }
            (Some(after[..digits].parse::<u16>().ok()?), &after[digits..])
        }
        None => (None, rest),
    };
    Some((HostPort { host, port }, rest))
}

/// Four decimal octets without leading zeros (what both ezk's digits and std's parser take),
/// read here byte by byte: std's parser after a split was a fifth of a Via's cost.
fn plain_ipv4(text: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = 0;
    for part in text.as_bytes().split(|&b| b == b'.') {
        if parts == octets.len() || part.is_empty() || part.len() > 3 || (part.len() > 1 && part[0] == b'0') {
            return None;
        }
        let mut n = 0u16;
        for &b in part {
            if !b.is_ascii_digit() {
                return None;
            }
            n = n * 10 + u16::from(b - b'0');
        }
        octets[parts] = u8::try_from(n).ok()?;
        parts += 1;
    }
    (parts == octets.len()).then(|| Ipv4Addr::from(octets))
}

/// A DNS label as ezk's host grammar takes it: letters, digits and `-`, not at either end.
fn is_label(label: &[u8]) -> bool {
    !label.is_empty()
        && label.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        && label.first() != Some(&b'-')
        && label.last() != Some(&b'-')
}

/// `;name[=value]` parameters, each name and value non-empty and of plain parameter characters;
/// they end at the end of the text or at one of `stop`. `None` on anything else.
fn params<'i>(src: &Bytes, mut text: &'i str, stop: &[u8]) -> Option<(Params<CPS>, &'i str)> {
    let mut params = Params::new();
    while let Some(rest) = text.strip_prefix(';') {
        let name_len = rest.bytes().take_while(|&b| is_param_byte(b)).count();
        if name_len == 0 {
            return None;
        }
        let name = BytesStr::from_parse(src, &rest[..name_len]);
        let rest = &rest[name_len..];
        match rest.strip_prefix('=') {
            Some(after) => {
                let value_len = after.bytes().take_while(|&b| is_param_byte(b)).count();
                if value_len == 0 {
                    return None;
                }
                params.push(Param { name, value: Some(BytesStr::from_parse(src, &after[..value_len])) });
                text = &after[value_len..];
            }
            None => {
                params.push(Param { name, value: None });
                text = rest;
            }
        }
    }
    match text.as_bytes().first() {
        None => Some((params, text)),
        Some(b) if stop.contains(b) => Some((params, text)),
        Some(_) => None,
    }
}

/// ezk's parameter characters (`param_char`), ASCII only and without `%` (escapes are decoded).
fn is_param_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_.!~*'()[]/:&+$`".contains(&b)
}

/// ezk's user characters, ASCII only and without `%`.
fn is_user_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_.!~*'()&=+$,;?/".contains(&b)
}

/// ezk's password characters, ASCII only.
fn is_password_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_.!~*'()%&=+$,".contains(&b)
}

#[cfg(test)]
mod tests;

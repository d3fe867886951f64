//! Which endpoint shard a message, a leg or a registrar answer belongs to.
//!
//! A node runs N endpoint shards (each its own machine, glue and actor: own transactions, own
//! leg table), so that parsing and the transaction layer use every core. Everything of one
//! call lives on one shard: the shard whose Call-ID hash the caller's INVITE had. The
//! transports pick the shard of a message from a cheap raw scan of its `Call-ID`/`i` header
//! ([`of_message`]), before anything parses it; what pbx itself writes says its shard:
//! - a leg id (and so pbx's tags, branches and a B-leg's Call-ID `<leg>@pbx`) is drawn by the
//!   shard with `leg % N == shard` ([`of_leg`]), and [`of_call_id`] reads a Call-ID of that
//!   form back as the leg's shard, so the callee's responses and requests come back to the
//!   shard that owns the call;
//! - a registrar transaction id is `n × N + shard` ([`of_tx`]).
//!
//! A message with no Call-ID goes to shard 0, which answers it 400 as any shard would.
//! Sans-IO and pure: no clock, no RNG, no key (the hash only spreads load; a peer that picks
//! its Call-IDs to load one shard could load the single endpoint as well before).

use crate::call::LegId;
use crate::sip::message::next_newline;
use std::borrow::Cow;

/// Endpoint shards a node runs at most, whatever the core count says: each holds its own
/// tables, and beyond a few cores the registrar and the calls are the bottleneck.
pub const ENDPOINT_SHARDS_MAX: usize = 16;

/// One shard of `count`: `index < count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// The whole endpoint as one shard (the simulator, unit tests, a node configured so).
    pub const ONE: Shard = Shard { index: 0, count: 1 };

    /// Shard `index` of `count`; `None` when `index` is not below `count`.
    pub fn new(index: usize, count: usize) -> Option<Shard> {
        (index < count && count <= ENDPOINT_SHARDS_MAX).then_some(Shard { index, count })
    }

    /// Does this shard own `leg` (did it draw it)?
    pub fn owns_leg(self, leg: LegId) -> bool {
        of_leg(leg, self.count) == self.index
    }

    /// The registrar transaction id for this shard's `n`th request: `n × count + index`, so
    /// ids still grow with `n` and [`of_tx`] reads the shard back.
    pub fn tx(self, n: u64) -> u64 {
        n * self.count as u64 + self.index as u64
    }
}

impl Default for Shard {
    fn default() -> Shard {
        Shard::ONE
    }
}

/// The shard that owns `leg`, of `count`.
pub fn of_leg(leg: LegId, count: usize) -> usize {
    (leg.0 % count.max(1) as u128) as usize
}

/// The shard whose registrar transaction `tx` is, of `count`.
pub fn of_tx(tx: u64, count: usize) -> usize {
    (tx % count.max(1) as u64) as usize
}

/// The shard of a Call-ID value, of `count`: pbx's own `<32 hex digits>@pbx` (a B-leg's) by
/// the leg it names, any other by an FNV-1a hash of its bytes. Whitespace around it (folding
/// may leave some) is skipped; a Call-ID has none inside.
pub fn of_call_id(value: &[u8], count: usize) -> usize {
    let count = count.max(1);
    let value = trim(value);
    if let Some(hex) = value.strip_suffix(b"@pbx")
        && hex.len() == 32
        && let Ok(hex) = std::str::from_utf8(hex)
        && let Ok(leg) = u128::from_str_radix(hex, 16)
    {
        return of_leg(LegId(leg), count);
    }
    let hash = value.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    (hash % count as u64) as usize
}

/// The shard of a SIP message, of `count`, from a raw scan of its head for the first
/// `Call-ID` (or compact `i`) header, any case, folded or not. No Call-ID, or none readable
/// (no head end, no colon): shard 0, where the parser answers it as it would anywhere.
pub fn of_message(bytes: &[u8], count: usize) -> usize {
    if count <= 1 {
        return 0;
    }
    call_id_value(bytes).map_or(0, |value| of_call_id(&value, count))
}

/// The value of the first Call-ID header, continuation lines joined; `None` without one.
/// Runs on every datagram before anything parses it, so lines are found eight bytes at a time
/// and a line whose name cannot be `Call-ID` or `i` is skipped on its first letter; the value
/// is copied only when folded.
fn call_id_value(bytes: &[u8]) -> Option<Cow<'_, [u8]>> {
    let line_at = |at: usize| {
        let end = next_newline(bytes, at).unwrap_or(bytes.len());
        let line = &bytes[at..end];
        (line.strip_suffix(b"\r").unwrap_or(line), end + 1)
    };
    let mut at = next_newline(bytes, 0)? + 1; // past the start line
    while at <= bytes.len() {
        let (line, next) = line_at(at);
        at = next;
        if line.is_empty() {
            return None; // the end of the head
        }
        if line[0] == b' ' || line[0] == b'\t' {
            continue; // a continuation of another header
        }
        // The trimmed name must start with `c` or `i`, whatever the case.
        let first = line.iter().find(|b| !b.is_ascii_whitespace());
        if !first.is_some_and(|&b| matches!(b | 0x20, b'c' | b'i')) {
            continue;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let name = trim(&line[..colon]);
        if !(name.eq_ignore_ascii_case(b"call-id") || name.eq_ignore_ascii_case(b"i")) {
            continue;
        }
        let mut value = Cow::Borrowed(&line[colon + 1..]);
        // Folded: what follows on lines that start with whitespace is part of the value.
        while at <= bytes.len() {
            let (next_line, next) = line_at(at);
            if !next_line.first().is_some_and(|&b| b == b' ' || b == b'\t') {
                break;
            }
            value.to_mut().extend_from_slice(next_line);
            at = next;
        }
        return Some(value);
    }
    None
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &bytes[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(call_id_line: &str) -> String {
        format!(
            "INVITE sip:101@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1\r\n\
             From: <sip:100@127.0.0.1>;tag=a\r\nTo: <sip:101@127.0.0.1>\r\n{call_id_line}CSeq: 1 INVITE\r\n\
             Content-Length: 0\r\n\r\n"
        )
    }

    /// The long and compact forms, in any case and with any spacing, name the same shard as
    /// the bare value; a folded value too.
    #[test]
    fn call_id_forms_agree() {
        for count in [2, 3, 7] {
            let want = of_call_id(b"abc-123@host.example", count);
            for line in [
                "Call-ID: abc-123@host.example\r\n",
                "call-id:abc-123@host.example\r\n",
                "CALL-ID \t:  abc-123@host.example  \r\n",
                "i: abc-123@host.example\r\n",
                "I:abc-123@host.example\r\n",
                "Call-ID:\r\n abc-123@host.example\r\n",
            ] {
                assert_eq!(of_message(message(line).as_bytes(), count), want, "{line:?} of {count}");
            }
            // Bare LF line ends, as RFC 4475 torture messages use.
            let lf = message("i: abc-123@host.example\r\n").replace("\r\n", "\n");
            assert_eq!(of_message(lf.as_bytes(), count), want, "LF-only of {count}");
        }
    }

    /// Call-IDs spread over the shards: each of 2 and 3 gets some of 300.
    #[test]
    fn call_ids_spread() {
        for count in [2usize, 3] {
            let mut seen = vec![0; count];
            for n in 0..300 {
                seen[of_call_id(format!("{n}@phone").as_bytes(), count)] += 1;
            }
            assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
        }
    }

    /// A B-leg's Call-ID (pbx's `<leg>@pbx`) names the shard that owns the leg.
    #[test]
    fn a_legs_call_id_names_its_shard() {
        for raw in [0u128, 1, 2, 5, u128::MAX, 0x1234_5678_9abc_def0_0fed_cba9_8765_4321] {
            let leg = LegId(raw);
            for count in 1..=5 {
                let line = format!("Call-ID: {}\r\n", leg.call_id());
                assert_eq!(of_message(message(&line).as_bytes(), count), of_leg(leg, count), "{leg} of {count}");
            }
        }
    }

    /// Without a Call-ID (or with a header that only looks like one) the message goes to
    /// shard 0; a body line or a header merely ending in "i" is not a Call-ID.
    #[test]
    fn no_call_id_is_shard_zero() {
        for count in [2, 4] {
            assert_eq!(of_message(message("").as_bytes(), count), 0);
            assert_eq!(of_message(b"garbage with no lines", count), 0);
            assert_eq!(of_message(b"", count), 0);
            assert_eq!(of_message(b"\r\n\r\n", count), 0);
            let in_body = format!("{}Call-ID: x@y\r\n", message(""));
            assert_eq!(of_message(in_body.as_bytes(), count), 0, "after the head");
        }
        // "Via-i: x" and "Xi: y" are not compact Call-IDs: both pick what the real one picks.
        let real = of_call_id(b"real@host", 5);
        let decoys = message("Xi: decoy@host\r\nCall-ID: real@host\r\n");
        assert_eq!(of_message(decoys.as_bytes(), 5), real);
    }

    /// Transaction ids and legs read back the shard that made them.
    #[test]
    fn tx_and_leg_name_their_shard() {
        for count in 1..=4 {
            for index in 0..count {
                let shard = Shard::new(index, count).unwrap();
                for n in [1u64, 2, 99] {
                    assert_eq!(of_tx(shard.tx(n), count), index);
                }
                assert!(shard.tx(2) > shard.tx(1));
            }
        }
        assert_eq!(Shard::new(2, 2), None);
        assert_eq!(Shard::new(0, ENDPOINT_SHARDS_MAX + 1), None);
        assert_eq!(Shard::ONE.tx(7), 7, "one shard: ids as before");
    }
}

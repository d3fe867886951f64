//! RFC 3891 `Replaces`: a dialog named by its Call-ID and both tags, as an INVITE's header
//! or a `Refer-To`'s embedded header carries it. Read here, below both the registrar (an
//! INVITE with Replaces) and the calls (attended transfer), which match it to a leg.

/// An RFC 3891 `Replaces` value: a dialog by its Call-ID and tags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replaces {
    pub call_id: String,
    pub to_tag: String,
    pub from_tag: String,
}

/// Reads a `Replaces` value: `call-id;to-tag=…;from-tag=…` (other parameters, such as
/// `early-only`, ignored).
pub fn parse_replaces(value: &str) -> Option<Replaces> {
    let mut parts = value.split(';');
    let call_id = parts.next()?.trim();
    let (mut to_tag, mut from_tag) = (None, None);
    for part in parts {
        let (name, value) = part.split_once('=').unwrap_or((part, ""));
        match name.trim().to_ascii_lowercase().as_str() {
            "to-tag" => to_tag = Some(value.trim().to_owned()),
            "from-tag" => from_tag = Some(value.trim().to_owned()),
            _ => {}
        }
    }
    let replaces = Replaces { call_id: call_id.to_owned(), to_tag: to_tag?, from_tag: from_tag? };
    let sane = |s: &str| !s.is_empty() && s.len() <= 256 && !s.bytes().any(|b| b.is_ascii_whitespace() || b < 0x21);
    (sane(&replaces.call_id) && sane(&replaces.to_tag) && sane(&replaces.from_tag)).then_some(replaces)
}

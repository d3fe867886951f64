//! pbx's header store: a message's header lines by name, in the order the names first came,
//! each value the raw text (shared with the received buffer when parsed).
//!
//! It keeps the part of ezk-sip-types' `Headers` interface pbx uses, and ezk's typed headers
//! decode from it and print into it. What differs is the name lookup: ezk compares a wanted
//! name with every entry's by string, with each name's compact and long forms, case-insensitive
//! (`Name::eq` was the first function of a REGISTER's profile, with `Headers::entry` 11 % of
//! it). Here every entry carries a key, a hash of its name's canonical form folded to lower
//! case, computed once when the entry is made; a lookup hashes the wanted name once and
//! compares integers, confirming a match with the canonical strings. The canonical form is
//! the same for a compact and a long name (ezk maps `v` and `Via` to one `Name`), so the
//! answers are ezk's.

use bytesstr::BytesStr;
use ezk_sip_types::Name;
use ezk_sip_types::header::headers::OneOrMore;
use ezk_sip_types::header::{ConstNamed, DecodeValues, DynNamed, ExtendValues, HeaderError};
use ezk_sip_types::print::{AppendCtx, Print, PrintCtx};
use std::{fmt, slice};

/// A message's headers (see the module documentation).
#[derive(Clone, Default)]
pub struct Headers {
    entries: Vec<Entry>,
}

#[derive(Clone, Debug)]
struct Entry {
    /// [`key_of`] the name.
    key: u64,
    name: Name,
    values: OneOrMore,
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter().map(|(n, v)| (n.as_print_str(), v.as_str()))).finish()
    }
}

/// FNV-1a of the name's canonical form, ASCII letters folded to lower case.
fn key_of(name: &Name) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    for byte in name.as_print_str().bytes() {
        hash ^= u64::from(byte.to_ascii_lowercase());
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// [`key_of`] of a name's canonical text, at compile time where the name is a constant.
pub const fn key_of_str(name: &str) -> u64 {
    let bytes = name.as_bytes();
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i].to_ascii_lowercase() as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

fn same_name(a: &Name, b: &Name) -> bool {
    a.as_print_str().eq_ignore_ascii_case(b.as_print_str())
}

impl Headers {
    pub fn new() -> Headers {
        Headers::default()
    }

    pub fn with_capacity(capacity: usize) -> Headers {
        Headers { entries: Vec::with_capacity(capacity) }
    }

    fn position(&self, name: &Name) -> Option<usize> {
        let key = key_of(name);
        self.entries.iter().position(|e| e.key == key && same_name(&e.name, name))
    }

    fn entry(&self, name: &Name) -> Option<&Entry> {
        self.position(name).map(|i| &self.entries[i])
    }

    /// Whether a header of this name is there.
    pub fn contains(&self, name: &Name) -> bool {
        self.position(name).is_some()
    }

    /// Appends one raw value (after any of the same name), as it is: no printing, no copy.
    pub fn insert_value(&mut self, name: Name, value: BytesStr) {
        // The name's key computed once, for the lookup and the new entry.
        let key = key_of(&name);
        self.insert_value_keyed(name, key, value);
    }

    /// [`Headers::insert_value`] with the name's key already known (`key` must be
    /// [`Headers::key_of`] the name).
    pub fn insert_value_keyed(&mut self, name: Name, key: u64, value: BytesStr) {
        debug_assert_eq!(key, key_of(&name), "the key of {}", name.as_print_str());
        match self.entries.iter().position(|e| e.key == key && same_name(&e.name, &name)) {
            Some(i) => self.entries[i].values.push(value),
            None => self.entries.push(Entry { key, name, values: OneOrMore::One(value) }),
        }
    }

    /// Appends a value printed from `value`.
    pub fn insert<N: Into<Name>, V: Print>(&mut self, name: N, value: V) {
        let value = value.print_ctx(PrintCtx::default()).to_string();
        self.insert_value(name.into(), BytesStr::from(value));
    }

    /// Appends a typed header under `name`.
    pub fn insert_type<H: ExtendValues + ?Sized>(&mut self, name: Name, header: &H) {
        let ctx = PrintCtx::default();
        match self.position(&name) {
            Some(i) => header.extend_values(ctx, &mut self.entries[i].values),
            None => {
                let values = header.create_values(ctx);
                self.entries.push(Entry { key: key_of(&name), name, values });
            }
        }
    }

    /// Appends a typed header under its own name.
    pub fn insert_named<H: DynNamed + ExtendValues + ?Sized>(&mut self, header: &H) {
        self.insert_type(header.name(), header);
    }

    /// A typed header under its own name, as the first entry when there is none of its name
    /// yet (after the existing values otherwise, as ezk does).
    pub fn insert_named_front<H: DynNamed + ExtendValues + ?Sized>(&mut self, header: &H) {
        let name = header.name();
        let ctx = PrintCtx::default();
        match self.position(&name) {
            Some(i) => header.extend_values(ctx, &mut self.entries[i].values),
            None => {
                let values = header.create_values(ctx);
                self.entries.insert(0, Entry { key: key_of(&name), name, values });
            }
        }
    }

    /// One raw value as the first entry when there is none of its name yet (after the
    /// existing values otherwise, as [`Headers::insert_named_front`]).
    pub fn insert_value_front(&mut self, name: Name, value: BytesStr) {
        match self.position(&name) {
            Some(i) => self.entries[i].values.push(value),
            None => self.entries.insert(0, Entry { key: key_of(&name), name, values: OneOrMore::One(value) }),
        }
    }

    /// Replaces the first value of `name` and moves its entry to the front: what removing
    /// them all, inserting `value` with [`Headers::insert_value_front`] and the rest after it
    /// does, without the copies. False (nothing changed) when there is no such header.
    pub fn replace_first_to_front(&mut self, name: &Name, value: BytesStr) -> bool {
        let Some(i) = self.position(name) else { return false };
        match &mut self.entries[i].values {
            OneOrMore::One(first) => *first = value,
            OneOrMore::More(values) => match values.first_mut() {
                Some(first) => *first = value,
                None => values.push(value),
            },
        }
        self.entries[..=i].rotate_right(1);
        true
    }

    /// Removes every value of `name`, returning them in order.
    pub fn remove(&mut self, name: &Name) -> Option<Vec<BytesStr>> {
        let entry = self.entries.remove(self.position(name)?);
        Some(match entry.values {
            OneOrMore::One(value) => vec![value],
            OneOrMore::More(values) => values,
        })
    }

    /// The raw values of `name`, in order; empty without any.
    pub fn get_raw(&self, name: &Name) -> slice::Iter<'_, BytesStr> {
        match self.entry(name).map(|e| &e.values) {
            Some(OneOrMore::One(value)) => slice::from_ref(value).iter(),
            Some(OneOrMore::More(values)) => values.iter(),
            None => [].iter(),
        }
    }

    /// The raw values of each of `names` (distinct names, with their [`Headers::key_of`]
    /// keys), found in one pass over the entries where `get_raw` makes one pass per name.
    pub fn get_raw_each<const N: usize>(&self, names: &[Name; N], keys: &[u64; N]) -> [&[BytesStr]; N] {
        let mut found: [&[BytesStr]; N] = [&[]; N];
        for entry in &self.entries {
            if let Some(i) = keys.iter().position(|&k| k == entry.key)
                && found[i].is_empty()
                && same_name(&entry.name, &names[i])
            {
                found[i] = match &entry.values {
                    OneOrMore::One(value) => slice::from_ref(value),
                    OneOrMore::More(values) => values.as_slice(),
                };
            }
        }
        found
    }

    /// The key entries of `name` are filed under (for [`Headers::get_raw_each`]).
    pub fn key_of(name: &Name) -> u64 {
        key_of(name)
    }

    /// `name`'s values decoded as `H`; `None` without any.
    pub fn try_get<H: DecodeValues>(&self, name: Name) -> Option<Result<H, HeaderError>> {
        let entry = self.entry(&name)?;
        let decoded = match &entry.values {
            OneOrMore::One(value) => H::decode(&mut std::iter::once(value)),
            OneOrMore::More(values) => H::decode(&mut values.iter()),
        };
        Some(decoded.map(|(_, h)| h).map_err(|_| HeaderError::malformed_adhoc(name, "malformed header")))
    }

    pub fn get<H: DecodeValues>(&self, name: Name) -> Result<H, HeaderError> {
        self.try_get(name.clone()).unwrap_or_else(|| Err(HeaderError::missing(name)))
    }

    pub fn try_get_named<H: ConstNamed + DecodeValues>(&self) -> Option<Result<H, HeaderError>> {
        self.try_get(H::NAME)
    }

    pub fn get_named<H: ConstNamed + DecodeValues>(&self) -> Result<H, HeaderError> {
        self.get(H::NAME)
    }

    /// Every (name, value), names in the order they first came, each name's values together.
    pub fn iter(&self) -> impl Iterator<Item = (&Name, &BytesStr)> + '_ {
        self.entries.iter().flat_map(|entry| {
            let values = match &entry.values {
                OneOrMore::One(value) => slice::from_ref(value),
                OneOrMore::More(values) => values.as_slice(),
            };
            values.iter().map(move |value| (&entry.name, value))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ezk_sip_types::Method;
    use ezk_sip_types::header::typed::{CSeq, MaxForwards};

    /// Compact and long names, in any case, find the same entry; values keep their order.
    #[test]
    fn names_match_as_ezk_matches_them() {
        let mut headers = Headers::new();
        headers.insert_value(Name::from(BytesStr::from_static("v")), BytesStr::from_static("SIP/2.0/UDP a"));
        headers.insert_value(Name::from(BytesStr::from_static("VIA")), BytesStr::from_static("SIP/2.0/UDP b"));
        headers.insert_value(Name::from(BytesStr::from_static("X-Thing")), BytesStr::from_static("1"));
        headers.insert_value(Name::from(BytesStr::from_static("x-thing")), BytesStr::from_static("2"));
        let vias: Vec<&str> = headers.get_raw(&Name::VIA).map(|v| v.as_str()).collect();
        assert_eq!(vias, ["SIP/2.0/UDP a", "SIP/2.0/UDP b"]);
        let things: Vec<&str> =
            headers.get_raw(&Name::from(BytesStr::from_static("X-THING"))).map(|v| v.as_str()).collect();
        assert_eq!(things, ["1", "2"]);
        assert!(!headers.contains(&Name::TO));
        assert_eq!(headers.get_raw(&Name::TO).count(), 0);
        let printed: Vec<(String, &str)> =
            headers.iter().map(|(n, v)| (n.as_print_str().to_owned(), v.as_str())).collect();
        assert_eq!(printed.len(), 4);
        assert_eq!(printed[0], ("Via".to_owned(), "SIP/2.0/UDP a"));
        assert_eq!(printed[3].1, "2");
    }

    /// An entry stays within 96 bytes, so the parser's ten-entry table for a REGISTER (see
    /// `parse_inner`) is one allocation malloc serves from its per-thread cache.
    #[test]
    fn entries_stay_small() {
        assert!(std::mem::size_of::<Entry>() <= 96, "{}", std::mem::size_of::<Entry>());
    }

    /// Typed headers print in and decode out; remove takes every value; a front insert of a
    /// new name goes first.
    #[test]
    fn typed_insert_decode_remove() {
        let mut headers = Headers::new();
        headers.insert_named(&CSeq::new(7, Method::INVITE));
        headers.insert(Name::CALL_ID, "abc");
        headers.insert_named_front(&MaxForwards(70));
        assert_eq!(headers.iter().next().map(|(n, _)| n.as_print_str()), Some("Max-Forwards"));
        assert_eq!(headers.get_named::<CSeq>().unwrap().cseq, 7);
        assert!(headers.get_named::<MaxForwards>().is_ok());
        assert!(headers.try_get_named::<ezk_sip_types::header::typed::Expires>().is_none());
        assert!(headers.get::<CSeq>(Name::CALL_ID).is_err());
        assert_eq!(headers.remove(&Name::CALL_ID).map(|v| v.len()), Some(1));
        assert!(!headers.contains(&Name::CALL_ID));
        assert!(headers.remove(&Name::CALL_ID).is_none());
    }
}

//! Call forwarding per extension: always (unconditional), on busy, on no answer — what an
//! extension's owner sets by API or by feature code, and how a call follows it.
//!
//! Where a call goes (the registrar's routing, [`super::machine::Route`]):
//! - The dialled extension's `always` target is followed, and that one's, and so on, until an
//!   extension without `always`: its phones ring. A target already met on the way (A → B → A) is
//!   a loop: it is not followed, and the last extension before it rings (A → B → A rings B). At
//!   most [`FORWARD_HOPS_MAX`] steps are followed.
//! - The extension that rings has its `busy` and `no_answer` targets (each resolved through its
//!   own `always` chain, loops cut the same way, an extension already on the way never
//!   followed): every phone busy (486, 600, 603) → the busy target rings; nobody answers within
//!   `no_answer_after_s` → the phones are cancelled and the no-answer target rings; every phone
//!   failed otherwise (unreachable, 480, 408) or none registered → the no-answer target rings
//!   at once. A forwarded call is forwarded once more at most (the target's own busy and
//!   no-answer forwards are not followed), so no call rings forever (docs/ARCHITECTURE.md).
//!
//! Feature codes (GSM's MMI codes, as Asterisk, 3CX and most desk phones know them), dialled by
//! a phone for its own extension: `*21*N#` always to N, `#21#` off; `*67*N#` on busy, `#67#`
//! off; `*61*N#` on no answer (`*61*N*S#`: after S seconds), `#61#` off; `#002#` all off.
//!
//! Pure logic: no clock, no I/O.

use std::collections::BTreeMap;

/// Steps of `always` forwarding a call follows at most.
pub const FORWARD_HOPS_MAX: usize = 8;
/// Seconds a call rings before its no-answer forward, unless set.
pub const NO_ANSWER_AFTER_S_DEFAULT: u32 = 20;
/// The range `no_answer_after_s` may take.
pub const NO_ANSWER_AFTER_S: std::ops::RangeInclusive<u32> = 1..=300;
/// Longest feature code read (`*61*` + a number + `*300#`).
const FEATURE_CODE_CHARS_MAX: usize = 4 + super::machine::NUMBER_CHARS_MAX + 5;

/// An extension's forwarding. Targets are extension numbers; `None` is off.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Forwarding {
    pub always: Option<String>,
    pub busy: Option<String>,
    pub no_answer: Option<String>,
    /// How long the phones ring before the no-answer forward (when there is one).
    pub no_answer_after_s: u32,
}

impl Default for Forwarding {
    fn default() -> Self {
        Forwarding { always: None, busy: None, no_answer: None, no_answer_after_s: NO_ANSWER_AFTER_S_DEFAULT }
    }
}

impl Forwarding {
    /// Nothing forwarded (the seconds do not count): nothing to store.
    pub fn is_off(&self) -> bool {
        self.always.is_none() && self.busy.is_none() && self.no_answer.is_none()
    }

    /// The targets, each with the field it is set in.
    pub fn targets(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [("always", &self.always), ("busy", &self.busy), ("no_answer", &self.no_answer)]
            .into_iter()
            .filter_map(|(field, target)| target.as_deref().map(|t| (field, t)))
    }

    /// Checks `number`'s forwarding; the error names the field first. `exists` says whether a
    /// number is an extension.
    pub fn validate(&self, number: &str, exists: impl Fn(&str) -> bool) -> Result<(), String> {
        for (field, target) in self.targets() {
            if target == number {
                return Err(format!("{field}: {number} cannot forward to itself"));
            }
            if !exists(target) {
                return Err(format!("{field}: {target} is not an extension"));
            }
        }
        if !NO_ANSWER_AFTER_S.contains(&self.no_answer_after_s) {
            let (min, max) = (NO_ANSWER_AFTER_S.start(), NO_ANSWER_AFTER_S.end());
            return Err(format!("no_answer_after_s: must be {min}–{max}"));
        }
        Ok(())
    }

    /// Every extension named, for erasure: does this forwarding involve `number`?
    pub fn names(&self, number: &str) -> bool {
        self.targets().any(|(_, t)| t == number)
    }
}

/// Which forward a feature code is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Always,
    Busy,
    NoAnswer,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Always => "always",
            Kind::Busy => "busy",
            Kind::NoAnswer => "no answer",
        }
    }
}

/// What a feature code asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeatureCode {
    /// Forward `kind` to `target` (for no answer, after `after_s` seconds if given).
    Set {
        kind: Kind,
        target: String,
        after_s: Option<u32>,
    },
    Clear(Kind),
    ClearAll,
}

impl FeatureCode {
    /// A dialled number read as a feature code: `None` when it does not start with `*` or `#`
    /// (a plain number), `Some(Err(()))` for one that does but is no code pbx knows. `%23` is
    /// read as `#` (RFC 3261 §19.1.2: `#` must be escaped in a user part; the SIP parser refuses
    /// a Request-URI with a raw one).
    pub fn parse(dialled: &str) -> Option<Result<FeatureCode, ()>> {
        if !dialled.starts_with(['*', '#']) && !dialled.starts_with("%23") {
            return None;
        }
        let code = dialled.replace("%23", "#");
        if code.len() > FEATURE_CODE_CHARS_MAX {
            return Some(Err(()));
        }
        let kind = |digits: &str| match digits {
            "21" => Some(Kind::Always),
            "67" => Some(Kind::Busy),
            "61" => Some(Kind::NoAnswer),
            _ => None,
        };
        let parsed = if code == "#002#" {
            Some(FeatureCode::ClearAll)
        } else if let Some(rest) = code.strip_prefix('#').and_then(|r| r.strip_suffix('#')) {
            kind(rest).map(FeatureCode::Clear)
        } else if let Some(rest) = code.strip_prefix('*').and_then(|r| r.strip_suffix('#')) {
            let mut parts = rest.split('*');
            let (kind, target, after) = (parts.next().and_then(kind), parts.next(), parts.next());
            let valid_number = |n: &str| {
                (1..=super::machine::NUMBER_CHARS_MAX).contains(&n.len())
                    && n.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
            };
            match (kind, target, after, parts.next()) {
                (Some(kind), Some(target), after, None) if valid_number(target) => {
                    let after_s = match after {
                        None => None,
                        Some(s) if kind == Kind::NoAnswer && !s.is_empty() && s.len() <= 3 => s.parse().ok(),
                        Some(_) => return Some(Err(())),
                    };
                    if after.is_some() && after_s.is_none() {
                        return Some(Err(()));
                    }
                    Some(FeatureCode::Set { kind, target: target.to_owned(), after_s })
                }
                _ => None,
            }
        } else {
            None
        };
        Some(parsed.ok_or(()))
    }

    /// `current` changed as the code asks.
    pub fn apply(&self, current: &Forwarding) -> Forwarding {
        let mut next = current.clone();
        match self {
            FeatureCode::Set { kind, target, after_s } => {
                *slot(&mut next, *kind) = Some(target.clone());
                if let Some(after) = after_s {
                    next.no_answer_after_s = *after;
                }
            }
            FeatureCode::Clear(kind) => *slot(&mut next, *kind) = None,
            FeatureCode::ClearAll => {
                next = Forwarding { no_answer_after_s: current.no_answer_after_s, ..Default::default() }
            }
        }
        next
    }

    /// What the phone is told it did (the reason phrase of the answer).
    pub fn confirmation(&self) -> String {
        match self {
            FeatureCode::Set { kind: Kind::NoAnswer, target, after_s: Some(s) } => {
                format!("Forwarding on: no answer to {target} after {s} s")
            }
            FeatureCode::Set { kind, target, .. } => format!("Forwarding on: {} to {target}", kind.name()),
            FeatureCode::Clear(kind) => format!("Forwarding off: {}", kind.name()),
            FeatureCode::ClearAll => "Forwarding off: all".into(),
        }
    }
}

fn slot(forwarding: &mut Forwarding, kind: Kind) -> &mut Option<String> {
    match kind {
        Kind::Always => &mut forwarding.always,
        Kind::Busy => &mut forwarding.busy,
        Kind::NoAnswer => &mut forwarding.no_answer,
    }
}

/// Follows `always` forwards from `from`: the extension whose phones ring. Every extension
/// met is pushed to `visited`; a target already in it (a loop) or a step past
/// [`FORWARD_HOPS_MAX`] is not taken.
pub fn follow_always(from: &str, forwarding: &BTreeMap<String, Forwarding>, visited: &mut Vec<String>) -> String {
    let mut at = from.to_owned();
    if !visited.contains(&at) {
        visited.push(at.clone());
    }
    for _ in 0..FORWARD_HOPS_MAX {
        let Some(next) = forwarding.get(&at).and_then(|f| f.always.clone()) else { break };
        if visited.contains(&next) {
            break;
        }
        visited.push(next.clone());
        at = next;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(&str, &str)]) -> BTreeMap<String, Forwarding> {
        entries
            .iter()
            .map(|(from, to)| (from.to_string(), Forwarding { always: Some(to.to_string()), ..Default::default() }))
            .collect()
    }

    #[test]
    fn always_is_followed_to_the_end_and_loops_are_cut_before_they_close() {
        let chain = table(&[("101", "102"), ("102", "103")]);
        let mut visited = Vec::new();
        assert_eq!(follow_always("101", &chain, &mut visited), "103");
        assert_eq!(visited, ["101", "102", "103"]);
        // A → B → A rings B.
        let looped = table(&[("101", "102"), ("102", "101")]);
        let mut visited = Vec::new();
        assert_eq!(follow_always("101", &looped, &mut visited), "102");
        // A target already on the way (a busy forward back to the dialled number) goes nowhere.
        let mut visited = vec!["101".to_string(), "102".to_string()];
        assert_eq!(follow_always("103", &looped, &mut visited), "103");
        // A chain longer than the bound stops at the bound.
        let long: Vec<(String, String)> = (0..20).map(|i| (format!("{i}"), format!("{}", i + 1))).collect();
        let long: Vec<(&str, &str)> = long.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let mut visited = Vec::new();
        assert_eq!(follow_always("0", &table(&long), &mut visited), FORWARD_HOPS_MAX.to_string());
    }

    #[test]
    fn feature_codes_read_as_gsm_codes() {
        let set = |kind, target: &str, after_s| Some(Ok(FeatureCode::Set { kind, target: target.into(), after_s }));
        assert_eq!(FeatureCode::parse("*21*102#"), set(Kind::Always, "102", None));
        assert_eq!(FeatureCode::parse("*21*102%23"), set(Kind::Always, "102", None));
        assert_eq!(FeatureCode::parse("*67*103#"), set(Kind::Busy, "103", None));
        assert_eq!(FeatureCode::parse("*61*103#"), set(Kind::NoAnswer, "103", None));
        assert_eq!(FeatureCode::parse("*61*103*15#"), set(Kind::NoAnswer, "103", Some(15)));
        assert_eq!(FeatureCode::parse("#21#"), Some(Ok(FeatureCode::Clear(Kind::Always))));
        assert_eq!(FeatureCode::parse("%2367%23"), Some(Ok(FeatureCode::Clear(Kind::Busy))));
        assert_eq!(FeatureCode::parse("#61#"), Some(Ok(FeatureCode::Clear(Kind::NoAnswer))));
        assert_eq!(FeatureCode::parse("#002#"), Some(Ok(FeatureCode::ClearAll)));
        assert_eq!(FeatureCode::parse("101"), None);
        for unknown in ["*99#", "*21*#", "*21*102", "*21*102*5#", "*61*103*x#", "*61*103*1000#", "*21*10 2#", "#", "*"]
        {
            assert_eq!(FeatureCode::parse(unknown), Some(Err(())), "{unknown}");
        }
        let long = format!("*21*{}#", "1".repeat(200));
        assert_eq!(FeatureCode::parse(&long), Some(Err(())));
    }

    #[test]
    fn codes_change_only_what_they_name() {
        let current = Forwarding { busy: Some("103".into()), no_answer_after_s: 30, ..Default::default() };
        let code = FeatureCode::parse("*21*102#").unwrap().unwrap();
        let next = code.apply(&current);
        assert_eq!(next, Forwarding { always: Some("102".into()), ..current.clone() });
        assert_eq!(code.confirmation(), "Forwarding on: always to 102");
        let all_off = FeatureCode::ClearAll.apply(&next);
        assert!(all_off.is_off());
        assert_eq!(all_off.no_answer_after_s, 30);
        let timed = FeatureCode::parse("*61*104*15#").unwrap().unwrap();
        assert_eq!(timed.apply(&current).no_answer_after_s, 15);
        assert_eq!(timed.confirmation(), "Forwarding on: no answer to 104 after 15 s");
    }

    #[test]
    fn validation_names_the_field() {
        let exists = |n: &str| ["101", "102"].contains(&n);
        let ok = Forwarding { always: Some("102".into()), ..Default::default() };
        assert_eq!(ok.validate("101", exists), Ok(()));
        let itself = Forwarding { busy: Some("101".into()), ..Default::default() };
        assert!(itself.validate("101", exists).unwrap_err().starts_with("busy: "));
        let stranger = Forwarding { no_answer: Some("999".into()), ..Default::default() };
        assert!(stranger.validate("101", exists).unwrap_err().starts_with("no_answer: "));
        let slow = Forwarding { no_answer_after_s: 0, ..Default::default() };
        assert!(slow.validate("101", exists).unwrap_err().starts_with("no_answer_after_s: "));
    }
}

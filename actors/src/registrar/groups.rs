//! Ring groups (teams): a number that rings several extensions, all at once or in turn.
//!
//! - **ring all**: every member's phones ring at once; the first to answer takes the call
//!   (the call's usual forking). Nobody within `no_answer_after_s` → the group's `no_answer`
//!   target, if set, else 480.
//! - **hunt**: the members in their order, each for `member_timeout_s`; a member without a
//!   registered phone is skipped, a busy one (486) passes the call on at once; after the last,
//!   the group's `no_answer` target, if set.
//!
//! A member's own forwarding is not followed (a group rings its people's desks, as Asterisk's
//! ring groups do by default); the group's `no_answer` target is an extension whose `always`
//! forward is. Groups come from the config file (`[[groups]]`), like conference rooms.
//!
//! Pure data: routing is the registrar's ([`super::machine`]).

use std::time::Duration;

/// How a group rings its members.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    #[default]
    RingAll,
    Hunt,
}

/// One group as configured.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Group {
    pub number: String,
    pub name: String,
    pub strategy: Strategy,
    /// Extension numbers, in hunt order.
    pub members: Vec<String>,
    /// Hunt: how long each member rings.
    pub member_timeout_s: u32,
    /// Where the call goes when nobody answered (an extension), if anywhere.
    pub no_answer: Option<String>,
    /// Ring all: how long the members ring before `no_answer`.
    pub no_answer_after_s: u32,
}

/// Members one group may have.
pub const GROUP_MEMBERS_MAX: usize = 32;
/// The default of `member_timeout_s` (hunt) and of `no_answer_after_s` (ring all).
pub const GROUP_RING_S_DEFAULT: u32 = 15;
/// The range both take.
pub const GROUP_RING_S: std::ops::RangeInclusive<u32> = 1..=300;

impl Group {
    pub fn member_timeout(&self) -> Duration {
        Duration::from_secs(u64::from(self.member_timeout_s))
    }

    pub fn no_answer_after(&self) -> Duration {
        Duration::from_secs(u64::from(self.no_answer_after_s))
    }
}

/// A group log-in feature code, dialled by a member for itself: `*45*600#` logs in to group
/// 600, `#45*600#` logs out of it; `*45#` and `#45#` do it for every group the phone's
/// extension is a member of (Asterisk's `*45` queue toggle, made explicit). `%23` reads as `#`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginCode {
    pub logged_in: bool,
    /// `None`: every group of the member.
    pub group: Option<String>,
}

impl LoginCode {
    /// `None` when the dialled string is no log-in code (it may still be another code).
    pub fn parse(dialled: &str) -> Option<LoginCode> {
        // Every INVITE's number comes through here: a plain one costs no allocation.
        if !dialled.starts_with(['*', '#']) && !dialled.starts_with("%23") {
            return None;
        }
        let code = dialled.replace("%23", "#");
        let (logged_in, rest) = match () {
            _ if code.starts_with("*45") => (true, &code[3..]),
            _ if code.starts_with("#45") => (false, &code[3..]),
            _ => return None,
        };
        let rest = rest.strip_suffix('#')?;
        if rest.is_empty() {
            return Some(LoginCode { logged_in, group: None });
        }
        let group = rest.strip_prefix('*')?;
        (!group.is_empty() && group.len() <= 32 && group.bytes().all(|b| b.is_ascii_digit()))
            .then(|| LoginCode { logged_in, group: Some(group.to_owned()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_codes_read_as_asterisk_style_codes() {
        let code = |logged_in, group: Option<&str>| Some(LoginCode { logged_in, group: group.map(Into::into) });
        assert_eq!(LoginCode::parse("*45*600#"), code(true, Some("600")));
        assert_eq!(LoginCode::parse("%2345*600%23"), code(false, Some("600")));
        assert_eq!(LoginCode::parse("*45#"), code(true, None));
        assert_eq!(LoginCode::parse("#45#"), code(false, None));
        for other in ["*45", "*45*#", "*45*60a#", "*4*600#", "*21*600#", "600"] {
            assert_eq!(LoginCode::parse(other), None, "{other}");
        }
    }
}

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

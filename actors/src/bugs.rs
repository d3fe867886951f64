//! Bugs a run can switch on, to prove that the simulator's checkers catch them — the way
//! FoundationDB's BUGGIFY and TigerBeetle's VOPR prove theirs. All off by default; the node
//! never turns one on (nothing in its config reaches here). A checker that no injected bug can
//! make fail would prove nothing.

/// Which deliberate bugs are on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bugs {
    /// The call machine forgets the CDR of one call in eight (by call id).
    pub skip_cdr: bool,
    /// The call machine does not hang up the other side when one side sends BYE.
    pub half_hangup: bool,
    /// The licence watchdog switches licensed features off after half the grace period.
    pub early_expiry: bool,
    /// The retention reaper keeps records for twice their retention (its cut-offs lag).
    pub lazy_reaper: bool,
    /// The retention reaper acts on records after half their retention (its cut-offs lead).
    pub eager_reaper: bool,
}

impl Bugs {
    /// The names `pbx-sim --inject-bug` accepts.
    pub const NAMES: [&'static str; 5] = ["skip-cdr", "half-hangup", "early-expiry", "lazy-reaper", "eager-reaper"];

    /// Switches on the bug called `name`; `false` if there is none by that name.
    pub fn enable(&mut self, name: &str) -> bool {
        match name {
            "skip-cdr" => self.skip_cdr = true,
            "half-hangup" => self.half_hangup = true,
            "early-expiry" => self.early_expiry = true,
            "lazy-reaper" => self.lazy_reaper = true,
            "eager-reaper" => self.eager_reaper = true,
            _ => return false,
        }
        true
    }
}

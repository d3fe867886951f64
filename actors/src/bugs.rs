//! Bugs a run can switch on, to prove that the simulator's checkers catch them — the way
//! FoundationDB's BUGGIFY and TigerBeetle's VOPR prove theirs. All off by default; the node
//! never turns one on (nothing in its config reaches here). A checker that no injected bug can
//! make fail would prove nothing.
//!
//! They exist only with the `sim-bugs` feature, which the simulator turns on and `pbx` never
//! does (scripts/test checks pbx-node's feature tree): without it [`Bugs`] is a zero-sized
//! type, every predicate is a constant `false`, and the buggy branches compile away.

/// Which deliberate bugs are on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bugs {
    /// The call machine forgets the CDR of one call in eight (by call id).
    #[cfg(feature = "sim-bugs")]
    pub skip_cdr: bool,
    /// The call machine does not hang up the other side when one side sends BYE.
    #[cfg(feature = "sim-bugs")]
    pub half_hangup: bool,
    /// The licence watchdog switches licensed features off after half the grace period.
    #[cfg(feature = "sim-bugs")]
    pub early_expiry: bool,
    /// The retention reaper keeps records for twice their retention (its cut-offs lag).
    #[cfg(feature = "sim-bugs")]
    pub lazy_reaper: bool,
    /// The retention reaper acts on records after half their retention (its cut-offs lead).
    #[cfg(feature = "sim-bugs")]
    pub eager_reaper: bool,
    /// The endpoint's glue drops an in-dialog BYE instead of routing it to its live leg.
    #[cfg(feature = "sim-bugs")]
    pub unrouted_request: bool,
    /// The call's core (`call::core`) loses the hang-up (`Bye`, `Finished`) a leg reports, for
    /// one call in eight, instead of looping it back into the call machine.
    #[cfg(feature = "sim-bugs")]
    pub lost_leg_event: bool,
    /// The registrar's glue lets a job's authenticated responses (a REGISTER's 200) out before
    /// the job's commands (its binding) are stored.
    #[cfg(feature = "sim-bugs")]
    pub unstored_ok: bool,
    /// The call machine forwards a call (on busy, on no answer) without re-arming its
    /// no-answer timer: the forward's phones ring until somebody gives up.
    #[cfg(feature = "sim-bugs")]
    pub endless_forward: bool,
}

impl Bugs {
    /// The names `pbx-sim --inject-bug` accepts.
    pub const NAMES: [&'static str; 9] = [
        "skip-cdr",
        "half-hangup",
        "early-expiry",
        "lazy-reaper",
        "eager-reaper",
        "unrouted-request",
        "lost-leg-event",
        "unstored-ok",
        "endless-forward",
    ];
}

#[cfg(feature = "sim-bugs")]
impl Bugs {
    /// Switches on the bug called `name`; `false` if there is none by that name.
    pub fn enable(&mut self, name: &str) -> bool {
        match name {
            "skip-cdr" => self.skip_cdr = true,
            "half-hangup" => self.half_hangup = true,
            "early-expiry" => self.early_expiry = true,
            "lazy-reaper" => self.lazy_reaper = true,
            "eager-reaper" => self.eager_reaper = true,
            "unrouted-request" => self.unrouted_request = true,
            "lost-leg-event" => self.lost_leg_event = true,
            "unstored-ok" => self.unstored_ok = true,
            "endless-forward" => self.endless_forward = true,
            _ => return false,
        }
        true
    }

    pub const fn skip_cdr(&self) -> bool {
        self.skip_cdr
    }

    pub const fn half_hangup(&self) -> bool {
        self.half_hangup
    }

    pub const fn early_expiry(&self) -> bool {
        self.early_expiry
    }

    pub const fn lazy_reaper(&self) -> bool {
        self.lazy_reaper
    }

    pub const fn eager_reaper(&self) -> bool {
        self.eager_reaper
    }

    pub const fn unrouted_request(&self) -> bool {
        self.unrouted_request
    }

    pub const fn lost_leg_event(&self) -> bool {
        self.lost_leg_event
    }

    pub const fn unstored_ok(&self) -> bool {
        self.unstored_ok
    }

    pub const fn endless_forward(&self) -> bool {
        self.endless_forward
    }
}

/// Without `sim-bugs`: no bug can be switched on, and every predicate is a constant `false`.
#[cfg(not(feature = "sim-bugs"))]
impl Bugs {
    /// Never switches a bug on: there is none in this build.
    pub fn enable(&mut self, _name: &str) -> bool {
        false
    }

    pub const fn skip_cdr(&self) -> bool {
        false
    }

    pub const fn half_hangup(&self) -> bool {
        false
    }

    pub const fn early_expiry(&self) -> bool {
        false
    }

    pub const fn lazy_reaper(&self) -> bool {
        false
    }

    pub const fn eager_reaper(&self) -> bool {
        false
    }

    pub const fn unrouted_request(&self) -> bool {
        false
    }

    pub const fn lost_leg_event(&self) -> bool {
        false
    }

    pub const fn unstored_ok(&self) -> bool {
        false
    }

    pub const fn endless_forward(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::Bugs;

    // Proves a build without `sim-bugs` (the product's) cannot switch a bug on: no field, no name.
    #[cfg(not(feature = "sim-bugs"))]
    #[test]
    fn without_the_feature_there_is_no_bug() {
        assert_eq!(std::mem::size_of::<Bugs>(), 0);
        let mut bugs = Bugs::default();
        for name in Bugs::NAMES {
            assert!(!bugs.enable(name), "{name}");
        }
        assert!(
            !(bugs.skip_cdr()
                || bugs.half_hangup()
                || bugs.early_expiry()
                || bugs.lazy_reaper()
                || bugs.eager_reaper()
                || bugs.unrouted_request()
                || bugs.lost_leg_event()
                || bugs.unstored_ok()
                || bugs.endless_forward())
        );
    }

    // Proves every name pbx-sim accepts switches on exactly its own bug (with `sim-bugs`).
    #[cfg(feature = "sim-bugs")]
    #[test]
    fn each_name_switches_on_its_bug() {
        let on = |b: Bugs| {
            [
                b.skip_cdr(),
                b.half_hangup(),
                b.early_expiry(),
                b.lazy_reaper(),
                b.eager_reaper(),
                b.unrouted_request(),
                b.lost_leg_event(),
                b.unstored_ok(),
                b.endless_forward(),
            ]
        };
        for (i, name) in Bugs::NAMES.into_iter().enumerate() {
            let mut bugs = Bugs::default();
            assert!(bugs.enable(name), "{name}");
            let expected: Vec<bool> = (0..Bugs::NAMES.len()).map(|j| j == i).collect();
            assert_eq!(on(bugs).to_vec(), expected, "{name}");
        }
        assert!(!Bugs::default().enable("no-such-bug"));
    }
}

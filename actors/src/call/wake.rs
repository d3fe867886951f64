//! The calls' side of push dispatch (RFC 8599): what a call asks when a fork's phone must be
//! woken ([`WakeRequest`]), what it hears back ([`WakeEvent`]), and the port the node's push
//! dispatch implements ([`PushPort`]). The `pn-*` parameters themselves are `crate::push`'s.

/// A call's request to wake one fork's phone: push it, then report its REGISTER.
#[derive(Clone, Debug)]
pub struct WakeRequest {
    pub leg: super::LegId,
    /// The phone's binding as it stands (its `pn-*` parameters, its last source).
    pub binding: crate::registrar::Binding,
    pub caller: String,
    pub callee: String,
}

/// What becomes of a [`WakeRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WakeEvent {
    /// The phone registered: call it at this binding.
    Woken { leg: super::LegId, binding: Box<crate::registrar::Binding> },
    /// The push was refused (the token is unregistered, the provider failed): do not wait.
    Failed { leg: super::LegId },
}

/// The node's push dispatch, as the calls reach it.
pub trait PushPort: Send + Sync + 'static {
    /// How long a call waits for a pushed phone; `None` when push is off (not configured, or
    /// not licensed): such phones are called like any other.
    fn wait(&self) -> Option<std::time::Duration>;
    /// Push the phone and watch for its REGISTER; `events` hears the outcome once.
    fn wake(&self, request: WakeRequest, events: Box<dyn Fn(WakeEvent) + Send + Sync>);
}

//! The node's side of conference rooms: where participations and PIN failures go.

use pbx_actors::conference::actor::{Participation, ParticipationSink};
use pbx_actors::registrar::RegistrarMsg;
use pbx_actors::shell::Current;
use std::net::IpAddr;

/// Participation records (category `conference-participation`) and PIN failures (counted by
/// the registrar like wrong passwords).
pub struct Participations {
    registrar: Current<RegistrarMsg>,
}

impl Participations {
    pub fn new(registrar: Current<RegistrarMsg>) -> Participations {
        Participations { registrar }
    }
}

impl ParticipationSink for Participations {
    fn record(&self, participation: Participation) {
        tracing::info!(
            room = %participation.room,
            number = %participation.number,
            joined = participation.joined.is_some(),
            "left the conference"
        );
    }

    fn auth_failure(&self, source: IpAddr, caller: &str) {
        self.registrar.cast(RegistrarMsg::AuthFailure { source, user: caller.to_owned() });
    }
}

//! The node's side of conference rooms: where participations and PIN failures go.

use crate::cluster::{ReplicatedParticipations, Replication};
use pbx_actors::conference::actor::{Participation, ParticipationSink};
use pbx_actors::registrar::RegistrarMsg;
use pbx_actors::shell::Current;
use std::net::IpAddr;
use std::sync::Arc;

/// Participation records (category `conference-participation`), stored through the replicated
/// store like call records, and PIN failures (counted by the registrar like wrong passwords).
pub struct Participations {
    registrar: Current<RegistrarMsg>,
    store: Arc<ReplicatedParticipations>,
}

impl Participations {
    pub fn new(registrar: Current<RegistrarMsg>, replication: Replication) -> Participations {
        Participations { registrar, store: Arc::new(ReplicatedParticipations(replication)) }
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
        // Committed within milliseconds of leaving, off the room's loop (the store blocks).
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(error) = store.put(std::slice::from_ref(&participation)) {
                tracing::error!(%error, room = %participation.room, "participation record not stored");
            }
        });
    }

    fn auth_failure(&self, source: IpAddr, caller: &str) {
        self.registrar.cast(RegistrarMsg::AuthFailure { source, user: caller.to_owned() });
    }
}

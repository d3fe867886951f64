//! The node's side of push dispatch (RFC 8599): where the records of the pushes it sent go.
//!
//! Each [`PushRecord`] (category `push-records` of the data inventory: the seed's "Push
//! Notification Service" data, kept 7 days) is committed through the replicated store as an
//! `Entry::PushRecords` into redb table `push_records`, like a conference participation
//! (`crate::conference::Participations`); without a quorum it is kept on this node only. The
//! retention reaper deletes it, the subject export lists it and an erasure deletes it
//! (docs/PRIVACY.md).
//!
//! Not here: sending the pushes (`pbx_actors::push`), what goes to FCM and APNs
//! (pbx-push-service's client).

use crate::cluster::{ReplicatedPushRecords, Replication};
use pbx_actors::push::{PushRecord, PushRecordSink};
use std::sync::Arc;

/// Push records (category `push-records`), stored through the replicated store like
/// conference participations.
pub struct PushRecords {
    store: Arc<ReplicatedPushRecords>,
}

impl PushRecords {
    /// Records go through `replication`, the node's cluster writer (the appliance's
    /// `cluster.replication`).
    pub fn new(replication: Replication) -> PushRecords {
        PushRecords { store: Arc::new(ReplicatedPushRecords(replication)) }
    }
}

impl PushRecordSink for PushRecords {
    fn record(&self, record: PushRecord) {
        let store = self.store.clone();
        let put = move || {
            // The record's numbers and token stay out of the log; its id finds it.
            if let Err(error) = store.put(std::slice::from_ref(&record)) {
                tracing::error!(%error, id = record.id, "push record not stored");
            }
        };
        // Committed within milliseconds, off the caller's loop (the store blocks): on the
        // runtime's blocking pool when called from it, else on the calling thread.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(put)),
            Err(_) => put(),
        }
    }
}

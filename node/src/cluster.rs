//! A node's side of the cluster: what it replicates and how committed changes reach its
//! storage and its registrar.
//!
//! The registrar writes through [`ReplicatedStore`]: its commands become one Raft entry, and
//! the REGISTER they guard is answered only once a majority holds that entry (a node without
//! a quorum answers 500 and changes nothing). Every node applies every committed entry, in log
//! order, to its own `pbx.redb` ([`NodeApplier`]); entries another node proposed also go to
//! this node's registrar, so it routes calls to phones registered anywhere. Its own entries it
//! applied to memory already.
//!
//! Replicated today: the extension directory and the bindings. Call records, the licence
//! documents and the privacy ledger stay per node (see docs/ARCHITECTURE.md).

use crate::storage::Storage;
use pbx_actors::registrar::{Binding, Extension, RegistrarCommand, RegistrarMsg, RegistrarStore};
use pbx_cluster::raft::{Applier, NodeId, Replica, Request};
use ractor::ActorRef;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

/// One replicated entry's payload, versioned like every stored value.
#[derive(Serialize, Deserialize)]
enum EntryV {
    V1(Entry),
}

#[derive(Serialize, Deserialize)]
enum Entry {
    Registrar(Vec<RegistrarCommand>),
}

/// The replicated state as a snapshot carries it.
#[derive(Serialize, Deserialize)]
enum SnapshotV {
    V1 { extensions: Vec<Extension>, bindings: Vec<Binding> },
}

/// Where applied changes of other nodes go before the registrar runs, and after.
enum Delivery {
    Pending(Vec<RegistrarCommand>),
    Registrar(ActorRef<RegistrarMsg>),
}

/// Applies committed entries to the node's storage and (other nodes' ones) to its registrar.
pub struct NodeApplier {
    me: NodeId,
    storage: Arc<Storage>,
    delivery: Mutex<Delivery>,
}

impl NodeApplier {
    pub fn new(me: NodeId, storage: Arc<Storage>) -> Arc<NodeApplier> {
        Arc::new(NodeApplier { me, storage, delivery: Mutex::new(Delivery::Pending(Vec::new())) })
    }

    /// From now on other nodes' changes go to `registrar`, starting with those applied since
    /// the node started (the registrar restored from storage before some of them; applying a
    /// put or remove again is harmless).
    pub fn connect(&self, registrar: ActorRef<RegistrarMsg>) {
        let mut delivery = self.delivery.lock().expect("delivery lock");
        if let Delivery::Pending(pending) = std::mem::replace(&mut *delivery, Delivery::Registrar(registrar.clone()))
            && !pending.is_empty()
        {
            let _ = registrar.cast(RegistrarMsg::Replicated(pending));
        }
    }

    /// `others` to the registrar; before it runs, `all` wait for it (this node's own entries
    /// replayed at start may postdate what the registrar restored).
    fn deliver(&self, all: &[RegistrarCommand], others: Vec<RegistrarCommand>) {
        match &mut *self.delivery.lock().expect("delivery lock") {
            Delivery::Pending(pending) => pending.extend_from_slice(all),
            Delivery::Registrar(r) if !others.is_empty() => {
                let _ = r.cast(RegistrarMsg::Replicated(others));
            }
            Delivery::Registrar(_) => {}
        }
    }
}

fn decode(request: &Request) -> Result<Entry, String> {
    match postcard::from_bytes::<EntryV>(&request.payload) {
        Ok(EntryV::V1(entry)) => Ok(entry),
        Err(e) => Err(format!("undecodable replicated entry from node {}: {e}", request.origin)),
    }
}

impl Applier for NodeApplier {
    fn apply(&self, requests: &[&Request]) -> Result<(), String> {
        let mut all = Vec::new();
        let mut others = Vec::new();
        for request in requests {
            let Entry::Registrar(commands) = decode(request)?;
            if request.origin != self.me {
                others.extend(commands.iter().cloned());
            }
            all.extend(commands);
        }
        self.storage.apply(&all).map_err(|e| e.to_string())?;
        self.deliver(&all, others);
        Ok(())
    }

    fn snapshot(&self) -> Result<Vec<u8>, String> {
        let state = self.storage.load().map_err(|e| e.to_string())?;
        postcard::to_allocvec(&SnapshotV::V1 { extensions: state.extensions, bindings: state.bindings })
            .map_err(|e| e.to_string())
    }

    fn install(&self, snapshot: &[u8]) -> Result<(), String> {
        let SnapshotV::V1 { extensions, bindings } =
            postcard::from_bytes(snapshot).map_err(|e| format!("undecodable snapshot: {e}"))?;
        let before = self.storage.load().map_err(|e| e.to_string())?;
        self.storage.replace_registrar(&extensions, &bindings).map_err(|e| e.to_string())?;
        // The registrar learns the difference: what went, then what is.
        let mut commands: Vec<RegistrarCommand> = before
            .bindings
            .into_iter()
            .filter(|b| !bindings.iter().any(|n| n.aor == b.aor && n.contact == b.contact))
            .map(|b| RegistrarCommand::RemoveBinding { aor: b.aor, contact: b.contact })
            .collect();
        commands.extend(
            before
                .extensions
                .into_iter()
                .filter(|e| !extensions.iter().any(|n| n.number == e.number))
                .map(|e| RegistrarCommand::RemoveExtension { number: e.number }),
        );
        commands.extend(extensions.into_iter().map(RegistrarCommand::PutExtension));
        commands.extend(bindings.into_iter().map(RegistrarCommand::PutBinding));
        self.deliver(&commands, commands.clone());
        Ok(())
    }
}

/// The registrar's store on a cluster node: a batch of commands is one Raft entry, stored
/// once a majority holds it. Called on the registrar's writer thread, never on the runtime.
pub struct ReplicatedStore {
    replica: Arc<Replica>,
    runtime: tokio::runtime::Handle,
}

impl ReplicatedStore {
    pub fn new(replica: Arc<Replica>, runtime: tokio::runtime::Handle) -> ReplicatedStore {
        ReplicatedStore { replica, runtime }
    }
}

impl RegistrarStore for ReplicatedStore {
    fn apply(&self, commands: &[RegistrarCommand]) -> Result<(), String> {
        if commands.is_empty() {
            return Ok(());
        }
        let payload =
            postcard::to_allocvec(&EntryV::V1(Entry::Registrar(commands.to_vec()))).map_err(|e| e.to_string())?;
        self.runtime.block_on(self.replica.write(payload)).map_err(|e| e.to_string())
    }
}

/// What `GET /api/v1/cluster` reads: the replica and the actor mesh.
#[derive(Clone)]
pub struct ClusterApi {
    pub token: String,
    pub replica: Arc<Replica>,
    pub mesh: Arc<Mutex<Option<pbx_cluster::mesh::Mesh>>>,
}

impl ClusterApi {
    /// The replica's status, with which members this node has a live actor session with.
    pub fn status(&self) -> pbx_cluster::raft::Status {
        let mut status = self.replica.status();
        let connected = self.mesh.lock().expect("mesh lock").as_ref().map(|m| m.connected());
        for member in &mut status.members {
            if member.name != status.node {
                member.actor_link = connected.as_ref().map(|c| c.iter().any(|n| n.as_str() == member.name));
            }
        }
        status
    }
}

async fn cluster_status(
    req: actix_web::HttpRequest,
    api: Option<actix_web::web::Data<ClusterApi>>,
) -> actix_web::HttpResponse {
    use actix_web::http::StatusCode;
    let Some(api) = api else { return crate::http::error(StatusCode::NOT_FOUND, "not a cluster node") };
    if !crate::http::bearer_matches(&req, &api.token) {
        return crate::http::error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (see DATA_DIR/admin.token)",
        );
    }
    actix_web::HttpResponse::Ok().json(api.status())
}

/// `GET /api/v1/cluster` (404 on a node that is not in a cluster).
pub fn routes(cfg: &mut actix_web::web::ServiceConfig) {
    cfg.route("/api/v1/cluster", actix_web::web::get().to(cluster_status));
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbx_actors::Timestamp;

    fn binding(aor: &str) -> Binding {
        Binding {
            aor: aor.into(),
            contact: format!("sip:{aor}@192.0.2.1:5060"),
            expires_at: Timestamp::from_secs(2_000_000_000),
            call_id: "c".into(),
            cseq: 1,
            source: "192.0.2.1:5060".parse().unwrap(),
            transport: pbx_actors::sip::Transport::Udp,
            user_agent: None,
        }
    }

    fn entry(origin: NodeId, commands: Vec<RegistrarCommand>) -> Request {
        Request { origin, payload: postcard::to_allocvec(&EntryV::V1(Entry::Registrar(commands))).unwrap() }
    }

    /// Entries land in storage whoever proposed them; a snapshot carries them to another node
    /// and replaces what it had; a payload nobody can read stops the applier with a reason.
    #[test]
    fn applies_snapshots_and_refuses_garbage() {
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let a = NodeApplier::new(1, Arc::new(Storage::open(dirs[0].path()).unwrap()));
        let b_storage = Arc::new(Storage::open(dirs[1].path()).unwrap());
        let b = NodeApplier::new(2, b_storage.clone());
        a.apply(&[
            &entry(1, vec![RegistrarCommand::PutBinding(binding("100"))]),
            &entry(2, vec![RegistrarCommand::PutBinding(binding("200"))]),
        ])
        .unwrap();
        b.apply(&[&entry(2, vec![RegistrarCommand::PutBinding(binding("300"))])]).unwrap();
        b.install(&a.snapshot().unwrap()).unwrap();
        let mut aors: Vec<String> = b_storage.load().unwrap().bindings.into_iter().map(|b| b.aor).collect();
        aors.sort();
        assert_eq!(aors, ["100", "200"]);
        // Before the registrar connects, b kept what it must tell it: 300 went, 100 and 200 are.
        let Delivery::Pending(pending) = &*b.delivery.lock().unwrap() else { panic!("not connected yet") };
        assert!(
            pending.contains(&RegistrarCommand::RemoveBinding { aor: "300".into(), contact: binding("300").contact })
        );
        let garbage = Request { origin: 2, payload: vec![0xff, 0xff, 0xff] };
        assert!(a.apply(&[&garbage]).unwrap_err().contains("undecodable replicated entry from node 2"));
    }
}

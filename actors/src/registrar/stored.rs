//! Earlier shapes of the registrar's durable values, as old data files, old Raft logs, old
//! snapshots and not-yet-upgraded cluster peers still hold them, and how each becomes today's.
//!
//! pbx-node keeps every stored value inside a version enum (`StoredBindingV`, `EntryV`,
//! `SnapshotV`); a variant that carries an old shape decodes with the type here and converts
//! with `From`. postcard writes a struct as its fields in order, so a shape here must stay
//! exactly as it was written: never edit one, add the next.

use super::machine::{Binding, Extension, RegistrarCommand};
use super::nat;
use crate::sip::message::Transport;
use crate::time::Timestamp;
use std::net::SocketAddr;

/// A binding as stored before issue 15: no NAT flag (the REGISTER's Via was not kept).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BindingV1 {
    pub aor: String,
    pub contact: String,
    pub expires_at: Timestamp,
    pub call_id: String,
    pub cseq: u32,
    pub source: SocketAddr,
    pub transport: Transport,
    pub user_agent: Option<String>,
}

impl From<BindingV1> for Binding {
    /// NAT as those bindings were routed: transport and Contact, no Via ([`nat::nat_without_via`]).
    fn from(b: BindingV1) -> Binding {
        let nat = nat::nat_without_via(&b.contact, b.source, b.transport);
        Binding {
            aor: b.aor,
            contact: b.contact,
            expires_at: b.expires_at,
            call_id: b.call_id,
            cseq: b.cseq,
            source: b.source,
            transport: b.transport,
            user_agent: b.user_agent,
            nat,
        }
    }
}

impl From<&Binding> for BindingV1 {
    /// The old shape of a binding (its NAT flag dropped): for tests that write what old code
    /// wrote.
    fn from(b: &Binding) -> BindingV1 {
        BindingV1 {
            aor: b.aor.clone(),
            contact: b.contact.clone(),
            expires_at: b.expires_at,
            call_id: b.call_id.clone(),
            cseq: b.cseq,
            source: b.source,
            transport: b.transport,
            user_agent: b.user_agent.clone(),
        }
    }
}

/// A registrar command as replicated before issue 15 (its bindings are [`BindingV1`]).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum RegistrarCommandV1 {
    PutExtension(Extension),
    RemoveExtension { number: String },
    PutBinding(BindingV1),
    RemoveBinding { aor: String, contact: String },
}

impl From<RegistrarCommandV1> for RegistrarCommand {
    fn from(c: RegistrarCommandV1) -> RegistrarCommand {
        match c {
            RegistrarCommandV1::PutExtension(e) => RegistrarCommand::PutExtension(e),
            RegistrarCommandV1::RemoveExtension { number } => RegistrarCommand::RemoveExtension { number },
            RegistrarCommandV1::PutBinding(b) => RegistrarCommand::PutBinding(b.into()),
            RegistrarCommandV1::RemoveBinding { aor, contact } => RegistrarCommand::RemoveBinding { aor, contact },
        }
    }
}

impl From<&RegistrarCommand> for RegistrarCommandV1 {
    /// The old shape of a command: for tests that write what old code wrote (which never wrote
    /// `SetForwarding`: asking for that one panics).
    fn from(c: &RegistrarCommand) -> RegistrarCommandV1 {
        match c {
            RegistrarCommand::PutExtension(e) => RegistrarCommandV1::PutExtension(e.clone()),
            RegistrarCommand::RemoveExtension { number } => {
                RegistrarCommandV1::RemoveExtension { number: number.clone() }
            }
            RegistrarCommand::PutBinding(b) => RegistrarCommandV1::PutBinding(b.into()),
            RegistrarCommand::RemoveBinding { aor, contact } => {
                RegistrarCommandV1::RemoveBinding { aor: aor.clone(), contact: contact.clone() }
            }
            // Old code never wrote one: a test asking for its old shape is wrong.
            RegistrarCommand::SetForwarding { .. } | RegistrarCommand::GroupLogin { .. } => {
                panic!("forwarding and groups did not exist before issue 15")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(contact: &str, source: &str, nat: bool) -> Binding {
        Binding {
            aor: "101".into(),
            contact: contact.into(),
            expires_at: Timestamp::from_secs(3_600),
            call_id: "c".into(),
            cseq: 7,
            source: source.parse().unwrap(),
            transport: Transport::Udp,
            user_agent: Some("ua".into()),
            nat,
        }
    }

    /// The V1 shape is byte for byte what a binding without the flag encoded to (postcard: the
    /// fields in order), and reads back with NAT from the Contact rule.
    #[test]
    fn a_v1_binding_reads_back_with_the_contact_rule() {
        let on_behalf = binding("sip:101@127.0.0.1:5070", "127.0.0.1:40000", true);
        let v1 = BindingV1::from(&on_behalf);
        let bytes = postcard::to_allocvec(&v1).unwrap();
        // Today's binding is the V1 fields plus one byte, the flag, at the end.
        let today = postcard::to_allocvec(&on_behalf).unwrap();
        assert_eq!(&today[..today.len() - 1], &bytes[..]);
        let back: Binding = postcard::from_bytes::<BindingV1>(&bytes).unwrap().into();
        assert_eq!(back, Binding { nat: false, ..on_behalf });
        let natted: Binding = BindingV1::from(&binding("sip:101@192.168.1.2", "127.0.0.1:40000", false)).into();
        assert!(natted.nat);
    }

    /// Commands convert both ways variant for variant, a binding's flag recomputed on the way in.
    #[test]
    fn v1_commands_convert_variant_for_variant() {
        let natted = binding("sip:101@192.168.1.2", "203.0.113.9:4000", true);
        for command in [
            RegistrarCommand::RemoveExtension { number: "101".into() },
            RegistrarCommand::PutBinding(natted.clone()),
            RegistrarCommand::RemoveBinding { aor: "101".into(), contact: natted.contact.clone() },
        ] {
            let bytes = postcard::to_allocvec(&RegistrarCommandV1::from(&command)).unwrap();
            let back: RegistrarCommand = postcard::from_bytes::<RegistrarCommandV1>(&bytes).unwrap().into();
            assert_eq!(back, command);
        }
    }
}

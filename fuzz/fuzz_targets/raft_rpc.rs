//! Raft RPCs between cluster members (cluster/src/raft/net.rs): the bytes a peer sends are
//! decoded with postcard as `Rpc<TypeConfig>` (the server side) and `Reply` (the client side).
//! A peer is authenticated (mutual TLS) but may be buggy, old or compromised: decoding must
//! fail cleanly, never panic or allocate without bound. What decodes must encode again and
//! decode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pbx_cluster::raft::TypeConfig;
use pbx_cluster::raft::net::{Reply, Rpc};

fuzz_target!(|data: &[u8]| {
    if let Ok(rpc) = postcard::from_bytes::<Rpc<TypeConfig>>(data) {
        let bytes = postcard::to_allocvec(&rpc).expect("a decoded Rpc encodes");
        let again = postcard::from_bytes::<Rpc<TypeConfig>>(&bytes).expect("an encoded Rpc decodes");
        assert_eq!(postcard::to_allocvec(&again).unwrap(), bytes, "Rpc encoding is not stable");
    }
    if let Ok(reply) = postcard::from_bytes::<Reply>(data) {
        let bytes = postcard::to_allocvec(&reply).expect("a decoded Reply encodes");
        let again = postcard::from_bytes::<Reply>(&bytes).expect("an encoded Reply decodes");
        assert_eq!(postcard::to_allocvec(&again).unwrap(), bytes, "Reply encoding is not stable");
    }
});

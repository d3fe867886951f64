//! pbx-simulator: deterministic runs of the whole PBX over virtual days, replayable from a seed.
//!
//! The simulator runs the product's own sans-IO machines — endpoint and transactions,
//! registrar, call and leg machines, RTP relay, conference rooms (`RoomCore`: the room machine
//! and its mixer) — wired as the node's actors wire them ([`node`]), and simulates only the
//! world around them: a virtual clock per node and phone (with drift), a network that delays,
//! loses, duplicates, reorders and partitions ([`sim`], [`options::NetOptions`]), a disk that
//! loses uncommitted writes at a crash ([`disk`]), node crashes and restarts, an office of SIP
//! phones that call each other and meet in rooms, each participant talking at a tone of its
//! own so that what it hears tells whom ([`phone`], [`audio`]), an intruder guessing their
//! passwords ([`scanner`]) and an attacker who spoofs, forges and injects to hang up, hijack,
//! overhear and lock out ([`attacker`]); the node's retention reaper works on its disk, and
//! the softphone proxy's ledger records the remote phones ([`proxy`]); some phones are mobile
//! apps that sleep until pbx pushes them (RFC 8599) through a simulated push service ([`push`]),
//! and a few users forward their calls with feature codes, loops among them.
//! Invariant checkers ([`check`]) watch as it runs. Everything random comes from the seed, so
//! a run is a function of its options: the same seed gives the same trace hash, and a failure
//! replays.

pub mod attacker;
pub mod audio;
pub mod check;
pub mod cli;
pub mod disk;
pub mod licence;
pub mod node;
pub mod options;
pub mod phone;
pub mod proxy;
pub mod push;
pub mod raft;
pub mod scanner;
pub mod sim;

pub use options::Options;
pub use sim::{Report, run};

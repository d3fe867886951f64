//! pbx-simulator: deterministic runs of the whole PBX, replayable from a seed.
//!
//! This crate will own a virtual clock, a simulated network and disk with faults, simulated
//! phones and invariant checkers, and the `pbx-sim` binary. It drives the very sans-IO
//! machines of `pbx-actors` (the registrar, transactions, …) that the product runs, so what a
//! simulation proves is what the product does.
//!
//! It holds no code yet; the machines it will drive already take time and randomness as inputs.

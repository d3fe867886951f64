//! pbx-simulator: deterministic runs of the whole PBX, replayable from a seed.

pub mod phone;

//! Simulated phones (being written).

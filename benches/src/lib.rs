//! pbx-benches: criterion benchmarks (`benches/`) and the SIPp load harness (`load/`).

//! pbx-benches: criterion benchmarks (`benches/`), the `register_load` REGISTER load generator
//! (`src/bin/`) and the load harness that sets pbx beside Kamailio (`load/run.sh`). How to run
//! them and what they measured: docs/PERFORMANCE.md.

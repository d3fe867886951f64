//! pbx-benches: criterion benchmarks (`benches/`), the `register_load` REGISTER load generator
//! (`src/bin/`) and the load harness that sets pbx beside Kamailio (`load/run.sh`). How to run
//! them and what they measured: docs/PERFORMANCE.md.

pub mod digest_client;

/// CPU seconds (user + system) this process has used, all threads, from /proc/self/stat.
pub fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of stat(5), counted from after the command name (field 3 is index 0).
    (ticks(11) + ticks(12)) / 100.0
}

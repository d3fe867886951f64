//! The simulator is deterministic only if nothing in it reads the wall clock or a global RNG,
//! or lets a hash map's random order decide what happens next. This test keeps it so. The
//! command line may pick a random seed (it prints it), and the run is timed for the report.
//! The Raft simulation (`src/raft/`) runs openraft, which is tokio tasks: on a current-thread
//! runtime with a paused clock, so `tokio` and tokio's `Instant::now` (virtual time) are its
//! clock; its `thread_rng` is the seeded generator it hands openraft.

use std::path::Path;

#[test]
fn simulator_sources_use_no_ambient_randomness() {
    let forbidden = ["HashMap", "HashSet", "thread_rng", "rand::random", "SystemTime", "Instant::now", "tokio"];
    let allowed = [
        // The run's wall time, for the report; a fresh seed when none is given (it is printed).
        ("sim.rs", "Instant::now"),
        ("cli.rs", "SystemTime"),
        ("raft/mod.rs", "tokio"),
        ("raft/mod.rs", "Instant::now"),
        ("raft/network.rs", "tokio"),
        ("raft/runtime.rs", "tokio"),
        ("raft/runtime.rs", "thread_rng"),
    ];
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let name = path.strip_prefix(&src).unwrap().to_string_lossy().replace('\\', "/");
            let text = std::fs::read_to_string(&path).unwrap();
            for word in forbidden {
                if text.contains(word) && !allowed.contains(&(name.as_str(), word)) {
                    found.push(format!("{name}: {word}"));
                }
            }
        }
    }
    assert!(found.is_empty(), "ambient nondeterminism in the simulator: {found:?}");
}

//! The simulator is deterministic only if nothing in it reads the wall clock or a global RNG,
//! or lets a hash map's random order decide what happens next. This test keeps it so. The
//! command line may pick a random seed (it prints it), and the run is timed for the report.

#[test]
fn simulator_sources_use_no_ambient_randomness() {
    let forbidden = ["HashMap", "HashSet", "thread_rng", "rand::random", "SystemTime", "Instant::now", "tokio"];
    // The run's wall time, for the report; a fresh seed when none is given (it is printed).
    let allowed = [("sim.rs", "Instant::now"), ("cli.rs", "SystemTime")];
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        for word in forbidden {
            if text.contains(word) && !allowed.contains(&(name.as_str(), word)) {
                found.push(format!("{name}: {word}"));
            }
        }
    }
    assert!(found.is_empty(), "ambient nondeterminism in the simulator: {found:?}");
}

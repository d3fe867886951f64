//! `pbx sim`: runs the simulator's own `pbx-sim` binary found beside `pbx` (the simulator is
//! not compiled into pbx), with the same flags and exit status.

use std::process::Command;

/// Runs `pbx sim` from `pbx`, with `pbx-sim` built beside it.
fn sim(args: &[&str]) -> (Option<i32>, String) {
    let pbx = pbx_tests::binary();
    let sim = pbx_tests::sim_binary();
    assert_eq!(pbx.parent(), sim.parent(), "pbx sim looks for pbx-sim beside pbx");
    let out = Command::new(pbx).arg("sim").args(args).output().expect("run pbx sim");
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
}

fn line<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines().map(str::trim_start).find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix:?} in {out}"))
}

/// A clean run exits 0 and prints its summary; run again, it prints the same trace hash.
#[test]
fn pbx_sim_runs_and_repeats_itself() {
    let args = ["--seed", "4", "--duration", "1d", "--phones", "10"];
    let (code, first) = sim(&args);
    assert_eq!(code, Some(0), "{first}");
    assert!(line(&first, "invariants:").contains(", 0 violations"), "{first}");
    assert!(!line(&first, "office:").contains(" 0 calls dialled"), "{first}");
    let (_, again) = sim(&args);
    assert_eq!(line(&first, "events:"), line(&again, "events:"));
}

/// A deliberate bug makes it fail with exit status 1 and a replay command.
#[test]
fn pbx_sim_fails_on_an_injected_bug() {
    let (code, out) = sim(&["--seed", "4", "--duration", "1d", "--phones", "20", "--inject-bug", "half-hangup"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(line(&out, "replay:").contains("--seed 4 --duration 1d --phones 20 --inject-bug half-hangup"));
}

/// `--help` and a bad flag reach pbx-sim, not pbx's own parser: its usage, and its exit status 2.
#[test]
fn pbx_sim_passes_every_flag_on() {
    let (code, help) = sim(&["--help"]);
    assert_eq!(code, Some(0), "{help}");
    assert!(help.contains("--inject-bug"), "{help}");
    let (code, out) = sim(&["--duration", "not-a-duration"]);
    assert_eq!(code, Some(2), "{out}");
}

/// A `pbx` with no `pbx-sim` beside it says so, naming the path it looked at, and fails.
#[test]
fn pbx_sim_without_the_simulator_names_the_missing_path() {
    let pbx = pbx_tests::binary();
    // A hard link (same file system as the target directory), not a symlink: the running
    // binary's path resolves symlinks, and would find the real pbx-sim.
    let dir = tempfile::tempdir_in(pbx.parent().expect("pbx has a directory")).expect("temporary directory");
    let lonely = dir.path().join("pbx");
    std::fs::hard_link(&pbx, &lonely).expect("link pbx into an empty directory");
    let out = Command::new(&lonely).args(["sim", "--seed", "1"]).output().expect("run pbx sim");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let missing = dir.path().join("pbx-sim");
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
}

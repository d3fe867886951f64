//! `pbx sim`: the simulator from the one `pbx` binary, the same as `pbx-sim`.

use std::process::Command;

fn sim(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(pbx_tests::binary()).arg("sim").args(args).output().expect("run pbx sim");
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

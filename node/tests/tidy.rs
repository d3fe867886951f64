//! Tidy: no import circles between the subsystem folders of node/src (issue 15: "folders that
//! show the architecture"), nor between the modules of host/ and of each crate under services/.
//! A circle is a pair of folders that need each other: what `cargo modules` would draw, read
//! from the source by actors/tests/support/module_graph.rs (shared with actors' tidy test).

#[path = "../../actors/tests/support/module_graph.rs"]
mod module_graph;

use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("node/ sits in the workspace").to_path_buf()
}

/// `src` has no import circles between its top-level modules; the message names each edge of
/// any circle with where it is made.
fn assert_no_circles(src: &Path) {
    let graph = module_graph::graph(src);
    let circles = module_graph::circles(&graph);
    assert!(circles.is_empty(), "{} has import circles:\n{}", src.display(), module_graph::explain(&graph, &circles));
}

// Proves node/src's folders import each other in one direction only (the composer, appliance,
// at the top), and that the scan saw the folders at all.
#[test]
fn node_folders_have_no_import_circles() {
    let src = workspace().join("node/src");
    let graph = module_graph::graph(&src);
    for edge in [("appliance", "http"), ("privacy", "http"), ("http", "supervisor")] {
        assert!(
            graph.get(edge.0).is_some_and(|to| to.contains_key(edge.1)),
            "scanned too little, no {edge:?}: {graph:?}"
        );
    }
    assert_no_circles(&src);
}

// Proves the crates beside the node (host/, services/*) have no import circles either.
#[test]
fn host_and_services_have_no_import_circles() {
    let mut crates = vec![workspace().join("host/src")];
    for entry in std::fs::read_dir(workspace().join("services")).expect("read services/") {
        let src = entry.expect("services/ entry").path().join("src");
        if src.is_dir() {
            crates.push(src);
        }
    }
    assert!(crates.len() >= 2, "no crate under services/: {crates:?}");
    for src in &crates {
        assert_no_circles(src);
    }
}

// Proves the check can fail: a graph with a circle between two folders is reported.
#[test]
fn a_circle_between_folders_is_found() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (file, text) in [("a/mod.rs", "use crate::b::X;\n"), ("b/mod.rs", "pub fn f() { crate::a::g() }\n")] {
        let path = dir.path().join(file);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, text).expect("write");
    }
    let graph = module_graph::graph(dir.path());
    assert_eq!(module_graph::circles(&graph), vec![vec!["a".to_string(), "b".to_string()]]);
}

//! Tidy: the import circles between node/src's modules, held where they are. node/src is still
//! flat files (issue 15 step 5 puts it in subsystem folders and breaks these); until then this
//! test fails on any new circle, and on a circle that is gone, so the list below stays true.

#[path = "../../actors/tests/support/module_graph.rs"]
mod module_graph;

use std::path::Path;

/// The circles node/src has today, each as its modules sorted by name. The big one: appliance
/// composes everything, yet privacy writes its key through appliance and imports http's
/// helpers, cluster answers HTTP with http's error and token check, and http holds privacy's
/// and cluster's state. The small one: transport asks limits for the open-file limit, and limits
/// asks transport for its TCP connection cap.
const KNOWN_CIRCLES: &[&[&str]] =
    &[&["appliance", "cluster", "core_actors", "http", "privacy"], &["limits", "transport"]];

/// node/src's import circles are exactly the known ones: none new, none silently gone.
#[test]
fn node_import_circles_are_the_known_ones() {
    let graph = module_graph::graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(graph.contains_key("appliance"), "scanned nothing: {graph:?}");
    let circles = module_graph::circles(&graph);
    let known: Vec<Vec<String>> = KNOWN_CIRCLES.iter().map(|c| c.iter().map(|m| m.to_string()).collect()).collect();
    assert_eq!(circles, known, "node/src's import circles changed:\n{}", module_graph::explain(&graph, &circles));
}

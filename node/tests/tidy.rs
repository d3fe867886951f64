//! Tidy: the import circles between node/src's modules, held where they are. node/src is still
//! flat files (issue 15 step 5 puts it in subsystem folders and breaks these); until then this
//! test fails on any new circle, and on a circle that is gone, so the list below stays true.

#[path = "../../actors/tests/support/module_graph.rs"]
mod module_graph;

use std::path::Path;

/// The circles node/src has today, each as its modules sorted by name. One is left: http holds
/// privacy's state in `ApiState`, registers its routes and asks it which subjects are restricted,
/// while the privacy routes are handlers on `ApiState` using http's helpers. (Gone: privacy's key
/// and `write_secret` live in secret_file, the cluster status route in http, and limits gets the
/// TCP cap passed in instead of asking transport.)
const KNOWN_CIRCLES: &[&[&str]] = &[&["http", "privacy"]];

/// node/src's import circles are exactly the known ones: none new, none silently gone.
#[test]
fn node_import_circles_are_the_known_ones() {
    let graph = module_graph::graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(graph.contains_key("appliance"), "scanned nothing: {graph:?}");
    let circles = module_graph::circles(&graph);
    let known: Vec<Vec<String>> = KNOWN_CIRCLES.iter().map(|c| c.iter().map(|m| m.to_string()).collect()).collect();
    assert_eq!(circles, known, "node/src's import circles changed:\n{}", module_graph::explain(&graph, &circles));
}

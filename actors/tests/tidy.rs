//! Tidy: the sans-IO rule of ARCHITECTURE.md, checked on the source itself.
//!
//! Every file of `actors/src` except the actor shells (`actor.rs`, files under an `actor/`
//! folder, and the shared `shell/` helpers) is machine code or a codec a machine uses: it must not read a clock, use a global
//! RNG, or import tokio. Only shells, which the simulator replaces, may. Comments are skipped,
//! so a doc may *say* "never calls Instant::now".

mod support {
    pub mod module_graph;
}

use std::path::{Path, PathBuf};
use support::module_graph;

const FORBIDDEN: &[(&str, &str)] = &[
    ("Instant::now", "reads the monotonic clock"),
    ("SystemTime::now", "reads the wall clock"),
    ("thread_rng", "uses the global RNG"),
    ("rand::random", "uses the global RNG"),
    ("rand::rng()", "uses the global RNG"),
    ("OsRng", "uses the OS RNG"),
    ("tokio", "imports tokio"),
    ("std::net::UdpSocket", "opens a socket"),
    ("std::net::TcpStream", "opens a socket"),
    ("std::fs", "touches the file system"),
    ("std::thread::sleep", "sleeps"),
];

fn is_shell(path: &Path) -> bool {
    path.components().any(|c| ["actor", "actor.rs", "shell"].iter().any(|s| c.as_os_str() == *s))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read source dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The offending lines of one file's text: `(line number, pattern, why)`.
fn violations(text: &str) -> Vec<(usize, &'static str, &'static str)> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        for (pattern, why) in FORBIDDEN {
            if code.contains(pattern) {
                found.push((n + 1, *pattern, *why));
            }
        }
    }
    found
}

/// No machine or codec file in actors/src reads a clock, a global RNG, or imports tokio.
#[test]
fn machines_are_sans_io() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let machines: Vec<_> = files.iter().filter(|p| !is_shell(p)).collect();
    assert!(machines.iter().any(|p| p.ends_with("machine.rs")), "found no machine.rs at all under {}", src.display());
    let mut report = String::new();
    for path in machines {
        let text = std::fs::read_to_string(path).expect("read source file");
        for (line, pattern, why) in violations(&text) {
            report.push_str(&format!("{}:{line}: `{pattern}` {why}\n", path.display()));
        }
    }
    assert!(report.is_empty(), "sans-IO rule broken (move this into the actor shell):\n{report}");
}

/// The checker itself flags each forbidden pattern in code and ignores it in comments.
#[test]
fn checker_flags_code_not_comments() {
    let code = "let t = std::time::Instant::now();\nuse tokio::net::UdpSocket;\nlet x: u8 = rand::random();";
    assert_eq!(violations(code).len(), 3);
    assert!(violations("/// never calls Instant::now or tokio").is_empty());
    assert!(is_shell(Path::new("src/registrar/actor.rs")));
    assert!(!is_shell(Path::new("src/registrar/machine.rs")));
}

/// No circle of imports between actors/src's top-level modules (folders and files): each
/// subsystem can be read, tested and moved knowing only what it imports.
#[test]
fn top_modules_import_no_circle() {
    let graph = module_graph::graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(graph.contains_key("call") && graph.contains_key("endpoint"), "scanned nothing: {graph:?}");
    let circles = module_graph::circles(&graph);
    assert!(
        circles.is_empty(),
        "import circles between actors/src modules:\n{}",
        module_graph::explain(&graph, &circles)
    );
}

/// The graph reader finds `crate::` paths in code, grouped or not, skips comments and
/// `#[cfg(test)]` items, and the circle finder reports exactly the modules in a circle.
#[test]
fn module_graph_reads_paths_and_finds_circles() {
    use module_graph::{Graph, circles, code_lines, named_modules};
    assert_eq!(named_modules("use crate::{call::Call, cdr, sip::{a, b}};"), ["call", "cdr", "sip"]);
    assert_eq!(named_modules("let x = crate::time::now(); pbx_crate::no"), ["time"]);
    let text = "use crate::a; // crate::b\n#[cfg(test)]\nmod tests {\n    use crate::c;\n}\n#[cfg(test)]\nuse crate::d;\nuse crate::e;";
    let named: Vec<String> = code_lines(text).iter().flat_map(|(_, c)| named_modules(c)).collect();
    assert_eq!(named, ["a", "e"]);
    let edge = |g: &mut Graph, a: &str, b: &str| {
        g.entry(a.into()).or_default().insert(b.into(), vec![]);
    };
    let mut g = Graph::new();
    edge(&mut g, "a", "b");
    edge(&mut g, "b", "c");
    edge(&mut g, "c", "d");
    assert!(circles(&g).is_empty());
    edge(&mut g, "c", "a");
    assert_eq!(circles(&g), vec![vec!["a".to_string(), "b".into(), "c".into()]]);
}

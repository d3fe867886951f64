//! The import graph between a crate's top-level modules (a folder or a file under `src/`), read
//! from the source: every `crate::<module>` path outside comments and test code (`tests.rs`
//! files, `tests/` folders, and the item after a `#[cfg(test)]`). What `cargo modules` would
//! draw, without a new tool; the tidy tests use it to hold the folders free of circles.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `from` → `to` → the places (`path:line`) where `from` names `crate::to`.
pub type Graph = BTreeMap<String, BTreeMap<String, Vec<String>>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read source dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "tests") {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") && path.file_name().is_some_and(|n| n != "tests.rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file under `src` belongs to; `None` for the crate roots.
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    match first.strip_suffix(".rs") {
        Some("lib" | "main") => None,
        Some(stem) => Some(stem.to_string()),
        None => Some(first.to_string()),
    }
}

/// The lines of `text` that are code: comments cut off, and each `#[cfg(test)]` item (an
/// attribute, then everything up to its closing brace or semicolon) blanked out.
pub fn code_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut skipping = false;
    let mut depth: i64 = 0;
    let mut opened = false;
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        if !skipping && code.trim_start().starts_with("#[cfg(test)]") {
            skipping = true;
            depth = 0;
            opened = false;
            continue;
        }
        if skipping {
            for c in code.chars() {
                match c {
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            let trimmed = code.trim();
            let ended = (opened && depth <= 0) || (!opened && trimmed.ends_with(';'));
            if ended {
                skipping = false;
            }
            continue;
        }
        out.push((n + 1, code.to_string()));
    }
    out
}

/// The top-level modules one line of code names: `crate::a`, and each of `crate::{a, b::c}`.
pub fn named_modules(code: &str) -> Vec<String> {
    let ident = |s: &str| s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>();
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        // `pbx_crate::x` or `my_crate::x` is not this crate.
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level names of the group: split on commas outside nested braces.
            let mut depth = 0;
            let mut start = 0;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        found.push(ident(group[start..i].trim()));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.push(ident(group[start..i].trim()));
                        start = i + 1;
                    }
                    _ => {}
                }
            }
        } else {
            found.push(ident(rest));
        }
    }
    found.retain(|m| !m.is_empty());
    found
}

/// The graph of `src`'s top-level modules (only names that are modules of `src` count).
pub fn graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let modules: BTreeSet<String> = files.iter().filter_map(|f| top_module(src, f)).collect();
    let mut graph = Graph::new();
    for file in &files {
        let Some(from) = top_module(src, file) else { continue };
        let text = std::fs::read_to_string(file).expect("read source file");
        for (line, code) in code_lines(&text) {
            for to in named_modules(&code) {
                if to != from && modules.contains(&to) {
                    let place = format!("{}:{line}", file.strip_prefix(src).unwrap_or(file).display());
                    graph.entry(from.clone()).or_default().entry(to).or_default().push(place);
                }
            }
        }
    }
    graph
}

/// The circles of `graph`: each strongly connected set of two or more modules, sorted.
pub fn circles(graph: &Graph) -> Vec<Vec<String>> {
    let nodes: BTreeSet<&String> = graph.keys().chain(graph.values().flat_map(|t| t.keys())).collect();
    let reaches = |from: &String| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.clone()];
        while let Some(n) = stack.pop() {
            for next in graph.get(&n).into_iter().flat_map(|t| t.keys()) {
                if seen.insert(next.clone()) {
                    stack.push(next.clone());
                }
            }
        }
        seen
    };
    let reach: BTreeMap<&String, BTreeSet<String>> = nodes.iter().map(|n| (*n, reaches(n))).collect();
    let mut out: Vec<Vec<String>> = Vec::new();
    for n in &nodes {
        if out.iter().any(|c| c.contains(n)) {
            continue;
        }
        let set: Vec<String> = nodes
            .iter()
            .filter(|m| *m == n || (reach[*n].contains(**m) && reach[*m].contains(*n)))
            .map(|m| (*m).clone())
            .collect();
        if set.len() > 1 {
            out.push(set);
        }
    }
    out
}

/// The edges inside each circle, with where each is made: what to read to break it.
pub fn explain(graph: &Graph, circles: &[Vec<String>]) -> String {
    let mut report = String::new();
    for circle in circles {
        report.push_str(&format!("circle: {}\n", circle.join(" ↔ ")));
        for from in circle {
            for (to, places) in graph.get(from).into_iter().flatten() {
                if circle.contains(to) {
                    report.push_str(&format!("  {from} → {to}: {}\n", places.join(", ")));
                }
            }
        }
    }
    report
}

//! The library's modules depend on each other in layers, never in a circle: each file's
//! `crate::…` (and, inside a module folder, `super::…`) paths are read from the sources and
//! the graph is checked for cycles — among the top-level modules, and among the entries of
//! every folder at any depth (`event_loop/`, `conn/`, `cli/`, `cli/bench/`…), where a
//! nested folder counts as one entry of its parent. Also: no glob imports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Source text without comments (so that doc links do not count as dependencies) and
/// without `#[cfg(test)]` modules' bodies being special: tests may use anything, so files
/// under a `tests` folder are skipped by the caller.
fn code_of(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The names that follow `prefix` in `code` (`crate::net::x` → `net`; groups
/// `crate::{a, b}` give both).
fn targets(code: &str, prefix: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.trim()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut found = BTreeSet::new();
    for (i, _) in code.match_indices(prefix) {
        let before = code[..i].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `foo_crate::` and the like
        }
        let after = &code[i + prefix.len()..];
        if let Some(group) = after.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            found.extend(group[..end].split(',').map(ident).filter(|n| !n.is_empty()));
        } else {
            let n = ident(after);
            if !n.is_empty() {
                found.insert(n);
            }
        }
    }
    found
}

/// A cycle in `graph`, if any (depth-first search).
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == n) {
            let mut cycle = stack[i..].to_vec();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_string());
        for m in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, graph, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for n in graph.keys() {
        if let Some(c) = visit(n, graph, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

/// The entries of a folder: its files (by stem) and its folders.
fn entries_of(files: &[PathBuf], dir: &Path) -> BTreeSet<String> {
    files
        .iter()
        .filter_map(|f| f.strip_prefix(dir).ok())
        .filter_map(|r| r.components().next())
        .map(|c| {
            c.as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string()
        })
        .collect()
}

#[test]
fn layering_has_no_import_cycles_and_no_glob_imports() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut top: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut inner: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for path in &files {
        let rel = path.strip_prefix(&src).expect("under src");
        let parts: Vec<String> = rel
            .iter()
            .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
            .collect();
        // Test code may reach anything; the rule is about the library's own layers.
        if parts.iter().any(|p| p == "tests") || parts[0] == "lib" || parts[0] == "main" {
            continue;
        }
        let text = std::fs::read_to_string(path).expect("read");
        let code = code_of(&text);
        for (n, line) in code.lines().enumerate() {
            let l = line.trim();
            assert!(
                !(l.starts_with("use ")
                    || l.starts_with("pub use ")
                    || l.starts_with("pub(crate) use "))
                    || !l.contains("::*")
                    || l.contains("prelude"),
                "glob import in {}:{}: {l}",
                rel.display(),
                n + 1
            );
        }
        // Unit tests inside a file are cut off: they may use anything.
        let code = match code.find("#[cfg(test)]\nmod tests") {
            Some(i) => code[..i].to_string(),
            None => code,
        };
        let module = parts[0].clone();
        let deps = top.entry(module.clone()).or_default();
        for t in targets(&code, "crate::") {
            if t != module {
                deps.insert(t);
            }
        }
        // At every folder on the file's path, the edges it gives its entry there.
        for depth in 1..parts.len() {
            let folder = parts[..depth].join("/");
            let entries = entries_of(&files, &src.join(&folder));
            // The entry of `folder` this file speaks for: itself, or the child folder it
            // is in.
            let me = parts[depth].clone();
            let edges = inner
                .entry(folder.clone())
                .or_default()
                .entry(me.clone())
                .or_default();
            // Full paths into this folder (`crate::cli::bench::x`).
            let mut found = targets(&code, &format!("crate::{}::", parts[..depth].join("::")));
            let own_folder = depth == parts.len() - 1;
            if own_folder && me == "mod" {
                // The folder's root depends on a child when it names its items
                // (`stream::x`), not merely by declaring it (`mod stream;`).
                let body: String = code
                    .lines()
                    .filter(|l| {
                        !l.trim_start()
                            .trim_start_matches("pub ")
                            .trim_start_matches("pub(crate) ")
                            .starts_with("mod ")
                    })
                    .collect::<Vec<_>>()
                    .join("\n");
                for child in &entries {
                    if child != "mod" && !targets(&body, &format!("{child}::")).is_empty() {
                        found.insert(child.clone());
                    }
                }
            } else if own_folder {
                // A sibling file, or an item of the folder's root.
                for t in targets(&code, "super::") {
                    found.insert(if entries.contains(&t) {
                        t
                    } else {
                        "mod".into()
                    });
                }
            } else if depth == parts.len() - 2 && parts[depth + 1] == "mod" {
                // A child folder's root: its `super::` is this folder.
                for t in targets(&code, "super::") {
                    found.insert(if entries.contains(&t) {
                        t
                    } else {
                        "mod".into()
                    });
                }
            }
            for t in found {
                if entries.contains(&t) && t != me {
                    edges.insert(t);
                }
            }
        }
    }
    // Only edges between modules that exist.
    let names: BTreeSet<String> = top.keys().cloned().collect();
    for deps in top.values_mut() {
        deps.retain(|d| names.contains(d));
    }
    if let Some(cycle) = find_cycle(&top) {
        panic!("import cycle among modules: {}", cycle.join(" -> "));
    }
    for (module, graph) in inner {
        if let Some(cycle) = find_cycle(&graph) {
            panic!("import cycle inside {module}/: {}", cycle.join(" -> "));
        }
    }
}

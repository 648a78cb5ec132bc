//! The crate graph ARCHITECTURE.md describes, checked from the manifests: each heavy library in
//! the one crate that owns it, and dependencies pointing down only.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

/// The names of a crate's normal dependencies (not dev- or build-dependencies).
fn dependencies(manifest: &str) -> BTreeSet<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(manifest);
    let text = std::fs::read_to_string(&path).unwrap();
    let value: toml::Value = toml::from_str(&text).unwrap();
    value
        .get("dependencies")
        .and_then(|d| d.as_table())
        .map(|t| t.keys().cloned().collect())
        .unwrap_or_default()
}

#[test]
fn each_heavy_library_lives_in_one_crate_and_dependencies_point_down() {
    let crates = [
        ("kiln", "Cargo.toml"),
        ("kiln-core", "core/Cargo.toml"),
        ("kiln-trainer", "trainer/Cargo.toml"),
        ("kiln-server", "server/Cargo.toml"),
        ("kiln-scheduler", "scheduler/Cargo.toml"),
        ("kiln-repl", "repl/Cargo.toml"),
    ];
    // Which crate may use each library that defines a layer (DESIGN.md: the top level is fixed,
    // and only the registry knows sled, the trainer burn, the server candle and HTTP).
    let owners = [
        ("sled", "kiln-core"),
        ("burn", "kiln-trainer"),
        ("candle-core", "kiln-server"),
        ("axum", "kiln-server"),
        ("tower-http", "kiln-server"),
        ("ureq", "kiln-server"),
        ("rustyline", "kiln-repl"),
        ("croner", "kiln-scheduler"),
    ];
    for (name, manifest) in crates {
        let deps = dependencies(manifest);
        for (library, owner) in owners {
            assert!(
                !deps.contains(library) || name == owner,
                "{name} depends on {library}, which only {owner} may use"
            );
        }
        // Library crates depend on kiln-core and on no other kiln crate; the binary is where
        // they meet (the scheduler's `Components` over the trainer, the serving runtime and the
        // registry; the server's `PipelineControl` over the scheduler).
        if name != "kiln" {
            let kiln: Vec<&String> = deps
                .iter()
                .filter(|d| d.starts_with("kiln-") && *d != "kiln-core")
                .collect();
            assert!(kiln.is_empty(), "{name} depends on {kiln:?}");
        }
    }
    let binary = dependencies("Cargo.toml");
    for forbidden in ["axum", "ureq", "burn", "candle-core", "sled"] {
        assert!(
            !binary.contains(forbidden),
            "the binary depends on {forbidden}"
        );
    }
    let core = dependencies("core/Cargo.toml");
    for forbidden in ["tokio", "axum", "burn", "candle-core", "ureq"] {
        assert!(
            !core.contains(forbidden),
            "kiln-core depends on {forbidden}"
        );
    }
}

/// The top-level modules of a crate's `src` and, for each, the modules it names through
/// `crate::` (tests left out).
fn module_edges(src: &str) -> std::collections::BTreeMap<String, BTreeSet<String>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(src);
    let mut edges: std::collections::BTreeMap<String, BTreeSet<String>> = Default::default();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(&root).unwrap();
            let module = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string();
            if module == "lib" || module == "main" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or("");
            let targets = edges.entry(module.clone()).or_default();
            let ident = |s: &str| -> String {
                s.chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect()
            };
            for (i, _) in code.match_indices("crate::") {
                let rest = &code[i + "crate::".len()..];
                if let Some(group) = rest.strip_prefix('{') {
                    let inner = &group[..group.find('}').unwrap_or(group.len())];
                    targets.extend(inner.split(',').map(|p| ident(p.trim())));
                } else {
                    targets.insert(ident(rest));
                }
            }
            targets.retain(|t| !t.is_empty() && *t != module);
        }
    }
    edges
}

#[test]
fn modules_of_a_crate_do_not_import_each_other_in_circles() {
    for src in [
        "core/src",
        "trainer/src",
        "server/src",
        "scheduler/src",
        "src",
    ] {
        let edges = module_edges(src);
        // Depth-first search for a path that comes back to where it started.
        fn cycle(
            edges: &std::collections::BTreeMap<String, BTreeSet<String>>,
            path: &mut Vec<String>,
        ) -> Option<Vec<String>> {
            let last = path.last().unwrap().clone();
            for next in edges.get(&last).into_iter().flatten() {
                if *next == path[0] {
                    let mut found = path.clone();
                    found.push(next.clone());
                    return Some(found);
                }
                if !path.contains(next) {
                    path.push(next.clone());
                    if let Some(found) = cycle(edges, path) {
                        return Some(found);
                    }
                    path.pop();
                }
            }
            None
        }
        for start in edges.keys() {
            let found = cycle(&edges, &mut vec![start.clone()]);
            assert!(
                found.is_none(),
                "{src}: modules import each other in a circle: {}",
                found.unwrap_or_default().join(" → ")
            );
        }
    }
}

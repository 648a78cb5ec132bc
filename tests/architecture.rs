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
        ("kiln-client", "client/Cargo.toml"),
        ("kiln-components", "components/Cargo.toml"),
    ];
    // Which crate may use each library that defines a layer.
    let owners = [
        ("sled", "kiln-core"),
        ("burn", "kiln-trainer"),
        ("candle-core", "kiln-server"),
        ("axum", "kiln-server"),
        ("tower-http", "kiln-server"),
        ("ureq", "kiln-client"),
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
        // Library crates depend on kiln-core and on no other kiln crate; the binary and the
        // components (the scheduler's `Components` over the trainer, the serving runtime and
        // the registry) are where they meet.
        if name != "kiln" && name != "kiln-components" {
            let kiln: Vec<&String> = deps
                .iter()
                .filter(|d| d.starts_with("kiln-") && *d != "kiln-core")
                .collect();
            assert!(kiln.is_empty(), "{name} depends on {kiln:?}");
        }
    }
    let components = dependencies("components/Cargo.toml");
    assert!(
        !components.contains("kiln-components") && !components.contains("axum"),
        "kiln-components serves nothing itself"
    );
    let core = dependencies("core/Cargo.toml");
    for forbidden in ["tokio", "axum", "burn", "candle-core", "ureq"] {
        assert!(
            !core.contains(forbidden),
            "kiln-core depends on {forbidden}"
        );
    }
}

//! Records the commit kiln is built from, for the `kiln_build_info` metric: `git rev-parse` in
//! a checkout, `unknown` elsewhere (a crate tarball, a tree without git).

fn main() {
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=KILN_COMMIT={commit}");
    // A new commit changes HEAD (or the branch it names). Only paths that exist are named: cargo
    // reruns a build script (and rebuilds the crate) on every build for one that does not, as
    // in a source tarball or a worktree, where `.git` is a file.
    println!("cargo:rerun-if-changed=build.rs");
    for path in ["../.git/HEAD", "../.git/refs/heads", "../.git/packed-refs"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}

//! Registers model versions and moves the `champion` alias in a loop, printing each item once it
//! is committed: `committed RUN VERSION DIGEST`. The registry crash test kills it at random
//! moments and checks that everything printed survived.
//!
//!     cargo run -p kiln-core --bin registry-crash-writer -- KILN_HOME [COUNT]
#![allow(clippy::unwrap_used)]

use std::io::Write;

use kiln_core::registry::{Expect, NewRun, Registry};

fn main() {
    let mut args = std::env::args().skip(1);
    let home = std::path::PathBuf::from(
        args.next()
            .expect("usage: registry-crash-writer KILN_HOME [COUNT]"),
    );
    let count: u64 = args.next().map_or(u64::MAX, |c| c.parse().unwrap());
    let reg = Registry::open(&home).unwrap();
    let scratch = home.join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let stdout = std::io::stdout();
    for i in 0..count {
        let run = reg
            .create_run(NewRun {
                experiment: "crash".into(),
                ..Default::default()
            })
            .unwrap();
        reg.log_metrics(run.id, &[("loss", 0, 1.0 / (i as f64 + 1.0))])
            .unwrap();
        // A directory bundle with a large file, so kills land mid-write too.
        let dir = scratch.join(format!("bundle-{}-{i}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("kiln-model.json"),
            format!("{{\"run\": {}}}", run.id),
        )
        .unwrap();
        let weights: Vec<u8> = (0..256 * 1024).map(|b| (b as u64 ^ run.id) as u8).collect();
        std::fs::write(dir.join("weights.safetensors"), weights).unwrap();
        let artifact = reg.log_artifact(run.id, "model", &dir).unwrap();
        reg.end_run(run.id, kiln_core::registry::RunStatus::Finished)
            .unwrap();
        let v = reg
            .register_version("crashy", run.id, "model", "", None)
            .unwrap();
        let current = reg.aliases("crashy").unwrap().get("champion").copied();
        let expect = current.map_or(Expect::Absent, Expect::Version);
        reg.set_alias("crashy", "champion", v.version, expect, "writer", "newer")
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let mut out = stdout.lock();
        writeln!(
            out,
            "committed {} {} {}",
            run.id, v.version, artifact.digest
        )
        .unwrap();
        out.flush().unwrap();
    }
}

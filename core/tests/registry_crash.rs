//! Killing a writer with SIGKILL at random moments loses nothing it reported as committed, never
//! leaves an artifact half visible, and never stops the store from opening.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use kiln_core::registry::Registry;
use rand::{RngExt, SeedableRng};

struct Committed {
    run: u64,
    version: u32,
    digest: String,
}

fn every_object_matches_its_name(home: &Path) {
    let objects = home.join("artifacts").join("objects");
    for dir in std::fs::read_dir(&objects).unwrap() {
        let dir = dir.unwrap().path();
        for file in std::fs::read_dir(&dir).unwrap() {
            let file = file.unwrap().path();
            let name = format!(
                "{}{}",
                dir.file_name().unwrap().to_string_lossy(),
                file.file_name().unwrap().to_string_lossy()
            );
            let bytes = std::fs::read(&file).unwrap();
            assert_eq!(
                blake3::hash(&bytes).to_hex().to_string(),
                name,
                "{} is damaged",
                file.display()
            );
        }
    }
}

/// The writer child process on `home`, its committed items on its standard output.
/// Opens a registry this test closed a moment ago. The other test of this file spawns writers
/// while this one runs; a process forked just as a lock file was closed holds a copy of it (and
/// so the lock) until it execs, for a few microseconds, so a `Locked` here is retried briefly.
fn reopen(home: &Path) -> Result<Registry, kiln_core::registry::RegistryError> {
    for _ in 0..200 {
        match Registry::open(home) {
            Err(kiln_core::registry::RegistryError::Locked { .. }) => {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
    Registry::open(home)
}

fn start_writer(home: &Path) -> std::process::Child {
    Command::new(PathBuf::from(env!("CARGO_BIN_EXE_registry-crash-writer")))
        .arg(home)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn sigkill_loses_nothing_committed() {
    let home = tempfile::tempdir().unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2026);
    let mut committed: Vec<Committed> = Vec::new();
    for round in 0..30 {
        let mut child = start_writer(home.path());
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter_map(|l| {
                    let mut p = l.split_whitespace().skip(1);
                    Some(Committed {
                        run: p.next()?.parse().ok()?,
                        version: p.next()?.parse().ok()?,
                        digest: p.next()?.to_string(),
                    })
                })
                .collect::<Vec<_>>()
        });
        std::thread::sleep(Duration::from_millis(rng.random_range(5..150)));
        child.kill().unwrap();
        child.wait().unwrap();
        let got = reader.join().unwrap();
        committed.extend(got);

        let reg = Registry::open(home.path())
            .unwrap_or_else(|e| panic!("round {round}: the store does not open: {e}"));
        let versions = if committed.is_empty() {
            vec![]
        } else {
            reg.versions("crashy").unwrap()
        };
        for c in &committed {
            let run = reg.run(c.run).unwrap();
            assert_eq!(run.artifacts[0].digest, c.digest, "round {round}");
            reg.verify_artifact(&run.artifacts[0]).unwrap();
            let v = versions.iter().find(|v| v.version == c.version).unwrap();
            assert_eq!(v.artifact.digest, c.digest);
            assert_eq!(reg.metric_history(c.run, "loss", None).unwrap().len(), 1);
        }
        if let Some(last) = committed.last() {
            let champion = reg.aliases("crashy").unwrap()["champion"];
            assert!(
                champion >= last.version,
                "round {round}: champion {champion} < {}",
                last.version
            );
            let history = reg.history("crashy").unwrap();
            for c in &committed {
                assert!(
                    history.iter().any(|e| e.to == Some(c.version)),
                    "move to {} lost",
                    c.version
                );
            }
        }
        drop(reg);
        every_object_matches_its_name(home.path());
    }
    eprintln!("{} items committed across 30 kills", committed.len());
    assert!(
        committed.len() >= 10,
        "only {} items committed in 30 rounds",
        committed.len()
    );
}

/// Copies a directory's files as they are at this moment, file by file, while a writer may be
/// changing them: what a power cut or a careless `cp -r` leaves.
fn torn_copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    let Ok(entries) = std::fs::read_dir(from) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let dest = to.join(e.file_name());
        if p.is_dir() {
            torn_copy(&p, &dest);
        } else if let Ok(bytes) = std::fs::read(&p) {
            std::fs::write(&dest, bytes).unwrap();
        }
    }
}

#[test]
fn a_store_copied_while_written_opens_whole_or_is_named_damaged_and_a_backup_restores_it() {
    let home = tempfile::tempdir().unwrap();
    let backups = tempfile::tempdir().unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let (mut opened, mut refused, mut total) = (0, 0, 0);
    for round in 0..8 {
        let mut child = start_writer(home.path());
        let stdout = child.stdout.take().unwrap();
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let lines = {
            let seen = seen.clone();
            std::thread::spawn(move || {
                for _ in BufReader::new(stdout).lines().map_while(Result::ok) {
                    seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            })
        };
        std::thread::sleep(Duration::from_millis(rng.random_range(20..120)));
        // Versions reported committed before the copy starts must be in a copy that opens.
        let committed_before = total + seen.load(std::sync::atomic::Ordering::SeqCst);
        let copy = tempfile::tempdir().unwrap();
        torn_copy(home.path(), copy.path());
        child.kill().unwrap();
        child.wait().unwrap();
        lines.join().unwrap();
        total += seen.load(std::sync::atomic::Ordering::SeqCst);
        // The writer's lock file travels with the copy; it holds no lock there.
        let verdict = reopen(copy.path()).and_then(|r| {
            let problems = r.check()?;
            let versions = r.versions("crashy").map(|v| v.len()).unwrap_or(0);
            Ok((problems, versions))
        });
        match verdict {
            Ok((problems, versions)) if problems.is_empty() => {
                assert!(
                    versions >= committed_before,
                    "round {round}: the copy has {versions} versions, {committed_before} were committed before it"
                );
                opened += 1;
            }
            Ok((problems, _)) => {
                refused += 1;
                eprintln!(
                    "round {round}: the copy opens with {} problems, e.g. {}",
                    problems.len(),
                    problems[0]
                );
            }
            Err(e) => {
                refused += 1;
                eprintln!("round {round}: the copy does not open: {e}");
            }
        }
        // Whatever the copy is, the newest backup puts a clean registry in its place, with every
        // version the backup held.
        let reg = reopen(home.path()).unwrap();
        let backup = backups.path().join(format!("b{round}"));
        let summary = reg.backup(&backup).unwrap();
        let versions = reg.versions("crashy").map(|v| v.len()).unwrap_or(0);
        drop(reg);
        let moved = kiln_core::registry::restore(copy.path(), &backup).unwrap();
        assert!(!moved.is_empty() || summary.records == 0);
        let restored = reopen(copy.path()).unwrap();
        assert!(restored.check().unwrap().is_empty(), "round {round}");
        assert_eq!(
            restored.versions("crashy").map(|v| v.len()).unwrap_or(0),
            versions
        );
        every_object_matches_its_name(copy.path());
    }
    eprintln!("torn copies: {opened} opened clean, {refused} named damaged");
}

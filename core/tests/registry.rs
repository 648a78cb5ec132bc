//! Registry behaviour: concurrency, ownership, bad input, corrupted artifacts, format versions.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use kiln_core::registry::{Expect, NewRun, Registry, RegistryError, RunStatus, Stage};

fn new_run(reg: &Registry) -> u64 {
    reg.create_run(NewRun::default()).unwrap().id
}

#[test]
fn eight_threads_logging_lose_nothing() {
    let home = tempfile::tempdir().unwrap();
    let reg = Registry::open(home.path()).unwrap();
    let runs: Vec<u64> = (0..8).map(|_| new_run(&reg)).collect();
    std::thread::scope(|s| {
        for (t, run) in runs.iter().enumerate() {
            let reg = &reg;
            s.spawn(move || {
                for step in 0..10_000i64 {
                    reg.log_metrics(*run, &[("loss", step, (t as f64) * 1e5 + step as f64)])
                        .unwrap();
                }
            });
        }
    });
    reg.flush().unwrap();
    drop(reg);
    let reg = Registry::open(home.path()).unwrap();
    for (t, run) in runs.iter().enumerate() {
        let points = reg.metric_history(*run, "loss", None).unwrap();
        assert_eq!(points.len(), 10_000);
        for (i, p) in points.iter().enumerate() {
            assert_eq!((p.step, p.value), (i as i64, (t as f64) * 1e5 + i as f64));
        }
        assert_eq!(reg.latest_metrics(*run).unwrap()["loss"].step, 9_999);
        let sampled = reg.metric_history(*run, "loss", Some(100)).unwrap();
        assert_eq!(sampled.len(), 100);
        assert_eq!((sampled[0].step, sampled[99].step), (0, 9_999));
    }
}

#[test]
fn one_process_owns_a_home() {
    let home = tempfile::tempdir().unwrap();
    let _reg = Registry::open(home.path()).unwrap();
    let err = Registry::open(home.path()).err().unwrap().to_string();
    assert!(
        err.contains(&format!("is in use by process {}", std::process::id())),
        "{err}"
    );
}

#[test]
fn bad_input_gives_clear_errors() {
    let home = tempfile::tempdir().unwrap();
    let reg = Registry::open(home.path()).unwrap();
    fn e<T: std::fmt::Debug>(r: Result<T, RegistryError>) -> String {
        r.unwrap_err().to_string()
    }
    assert_eq!(
        e(reg.run(0xdead)),
        "no run `0000dead`; list runs with `kiln runs list`"
    );
    assert_eq!(e(reg.model("nope")), "no model `nope`");
    reg.create_model("churn", "").unwrap();
    assert_eq!(
        e(reg.model("chrun")),
        "no model `chrun`; did you mean `churn`?"
    );
    assert_eq!(
        e(reg.set_alias("churn", "champion", 3, Expect::Any, "me", "")),
        "no version `3` of model `churn`"
    );
    assert_eq!(
        e(reg.create_experiment(&"x".repeat(300))),
        "experiment name is 300 bytes; the limit is 256"
    );
    assert!(e(reg.create_model("has space", "")).contains("may hold only letters"));
    assert!(e(reg.create_model("tab\there", "")).contains("control character"));
    assert!(
        e(reg.set_alias("churn", "1st", 1, Expect::Any, "me", ""))
            .contains("must start with a letter")
    );
    assert_eq!(
        e(reg.create_model("churn", "")),
        "model `churn` already exists"
    );
    let run = new_run(&reg);
    assert!(
        e(reg.register_version("churn", run, "model", "", None))
            .contains("the run has no artifacts")
    );
}

#[test]
fn aliases_move_by_compare_and_set_with_history_and_stages() {
    let home = tempfile::tempdir().unwrap();
    let reg = Registry::open(home.path()).unwrap();
    let file = home.path().join("w.bin");
    for i in 0..3u8 {
        std::fs::write(&file, [i; 64]).unwrap();
        let run = new_run(&reg);
        reg.log_metrics(run, &[("auc", 0, 0.8 + f64::from(i) / 100.0)])
            .unwrap();
        reg.log_artifact(run, "model", &file).unwrap();
        reg.end_run(run, RunStatus::Finished).unwrap();
        let v = reg
            .register_version("churn", run, "model", "", None)
            .unwrap();
        assert_eq!(v.version, u32::from(i) + 1);
        assert_eq!(v.metrics["auc"], 0.8 + f64::from(i) / 100.0);
    }
    reg.set_alias("churn", "champion", 1, Expect::Absent, "ana", "first")
        .unwrap();
    let before_two = reg.history("churn").unwrap()[0].at_ms;
    std::thread::sleep(std::time::Duration::from_millis(5));
    reg.set_alias(
        "churn",
        "champion",
        2,
        Expect::Version(1),
        "bo",
        "better auc",
    )
    .unwrap();
    // A second promotion that read the old state loses, and says who won.
    let lost = reg.set_alias("churn", "champion", 3, Expect::Version(1), "cy", "race");
    assert!(
        matches!(lost, Err(RegistryError::Conflict { found: Some(2), .. })),
        "{lost:?}"
    );
    assert_eq!(
        reg.alias_at("churn", "champion", before_two).unwrap(),
        Some(1)
    );
    assert_eq!(
        reg.alias_at("churn", "champion", i64::MAX).unwrap(),
        Some(2)
    );
    assert_eq!(reg.alias_at("churn", "champion", 0).unwrap(), None);
    assert_eq!(reg.stage("churn", 2).unwrap(), Stage::Production);
    assert_eq!(reg.stage("churn", 1).unwrap(), Stage::Archived);
    assert_eq!(reg.stage("churn", 3).unwrap(), Stage::None);
    assert_eq!(reg.resolve("churn", "champion").unwrap().version, 2);
    assert_eq!(reg.resolve("churn", "v3").unwrap().version, 3);
    let refused = reg
        .delete_version("churn", 2, false, "me")
        .unwrap_err()
        .to_string();
    assert_eq!(
        refused,
        "version 2 of model `churn` is what alias `champion` points to; move the alias first or delete with --force"
    );
    let h = reg.history("churn").unwrap();
    assert_eq!(h.len(), 2);
    assert_eq!(
        (h[1].from, h[1].to, h[1].by.as_str(), h[1].reason.as_str()),
        (Some(1), Some(2), "bo", "better auc")
    );
}

#[test]
fn watchers_see_promotions() {
    let home = tempfile::tempdir().unwrap();
    let reg = Registry::open(home.path()).unwrap();
    let events = reg.watch();
    let file = home.path().join("w.bin");
    std::fs::write(&file, b"w").unwrap();
    let run = new_run(&reg);
    reg.log_artifact(run, "model", &file).unwrap();
    reg.register_version("m", run, "model", "", None).unwrap();
    reg.set_alias("m", "champion", 1, Expect::Any, "me", "")
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        seen.push(
            events
                .recv_timeout(std::time::Duration::from_secs(5))
                .unwrap(),
        );
    }
    assert!(
        seen.contains(&kiln_core::registry::RegistryEvent::VersionCreated {
            model: "m".into(),
            version: 1
        })
    );
    assert!(seen.iter().any(
        |e| matches!(e, kiln_core::registry::RegistryEvent::AliasMoved(a) if a.to == Some(1))
    ));
}

#[test]
fn corrupted_artifacts_are_detected_and_shared_ones_survive_deletes() {
    let home = tempfile::tempdir().unwrap();
    let reg = Registry::open(home.path()).unwrap();
    let dir = home.path().join("bundle");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("kiln-model.json"), "{}").unwrap();
    std::fs::write(dir.join("sub/weights.safetensors"), [7u8; 1000]).unwrap();
    let a = new_run(&reg);
    let b = new_run(&reg);
    let art_a = reg.log_artifact(a, "model", &dir).unwrap();
    let art_b = reg.log_artifact(b, "model", &dir).unwrap();
    assert_eq!(
        art_a.digest, art_b.digest,
        "the same content is stored once"
    );
    assert_eq!(art_a.size, 1002);
    let out = home.path().join("out");
    reg.export_artifact(&art_a, &out).unwrap();
    assert_eq!(
        std::fs::read(out.join("sub/weights.safetensors")).unwrap(),
        [7u8; 1000]
    );

    // Deleting one run keeps what the other still references; deleting both collects it.
    let object = reg.artifact_path(&art_a.digest).unwrap();
    reg.delete_run(a).unwrap();
    assert!(object.exists());
    reg.verify_artifact(&art_b).unwrap();

    // Damage a file the manifest names.
    let manifest: kiln_core::registry::Manifest =
        serde_json::from_slice(&std::fs::read(&object).unwrap()).unwrap();
    let weights = reg.artifact_path(&manifest.files[1].digest).unwrap();
    std::fs::write(&weights, [8u8; 1000]).unwrap();
    let err = reg.verify_artifact(&art_b).unwrap_err().to_string();
    assert!(err.contains("does not match its digest"), "{err}");
    assert!(
        reg.export_artifact(&art_b, &home.path().join("out2"))
            .is_err()
    );

    reg.delete_run(b).unwrap();
    assert!(!object.exists());
    assert!(!weights.exists());
    let mut params = BTreeMap::new();
    params.insert("lr".to_string(), "0.1".to_string());
    let c = reg
        .create_run(NewRun {
            params: params.clone(),
            ..Default::default()
        })
        .unwrap();
    params.insert("lr".to_string(), "0.2".to_string());
    assert!(
        reg.log_params(c.id, &params)
            .unwrap_err()
            .to_string()
            .contains("parameters do not change")
    );
}

#[test]
fn a_store_from_a_newer_kiln_is_refused() {
    let home = tempfile::tempdir().unwrap();
    drop(Registry::open(home.path()).unwrap());
    {
        // sled's flusher lets go of the store a moment after the registry is dropped.
        let mut tries = 0;
        let db = loop {
            match sled::open(home.path().join("registry")) {
                Ok(db) => break db,
                Err(e) if tries < 200 => {
                    tries += 1;
                    let _ = e;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => panic!("{e}"),
            }
        };
        db.open_tree("meta")
            .unwrap()
            .insert("store_format", &99u32.to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    let err = Registry::open(home.path()).err().unwrap().to_string();
    assert_eq!(
        err,
        "the registry was written by a newer kiln (format 99; this kiln reads up to 1); upgrade kiln"
    );
}

//! Deployments in the registry: checked when set, kept across reopening, guarding the versions
//! they name, gone with their model.
#![allow(clippy::unwrap_used)]

use kiln_core::registry::{Batching, Deployment, Expect, NewRun, Registry, RegistryError, Route};

fn with_versions(reg: &Registry, model: &str, n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w");
    for i in 0..n {
        std::fs::write(&file, format!("weights {i}")).unwrap();
        let run = reg.create_run(NewRun::default()).unwrap().id;
        reg.log_artifact(run, "model", &file).unwrap();
        reg.register_version(model, run, "model", "", None).unwrap();
    }
}

fn split(model: &str, routes: &[(&str, u32)]) -> Deployment {
    Deployment {
        routes: routes
            .iter()
            .map(|(t, p)| Route {
                target: t.to_string(),
                percent: *p,
            })
            .collect(),
        ..Deployment::default_for(model)
    }
}

fn invalid(e: RegistryError) -> String {
    match e {
        RegistryError::Invalid(m) => m,
        other => panic!("expected an invalid deployment, got {other}"),
    }
}

#[test]
fn deployments_are_checked_kept_and_guard_their_versions() {
    let home = tempfile::tempdir().unwrap();
    let reg = Registry::open(home.path()).unwrap();
    with_versions(&reg, "m", 3);
    reg.set_alias("m", "champion", 1, Expect::Any, "t", "")
        .unwrap();
    assert_eq!(reg.deployment("m").unwrap(), Deployment::default_for("m"));

    let e = reg
        .set_deployment(split("m", &[("1", 60), ("2", 30)]), "t")
        .unwrap_err();
    assert!(invalid(e).contains("adds up to 90%"));
    let e = reg
        .set_deployment(split("m", &[("2", 50), ("v2", 50)]), "t")
        .unwrap_err();
    assert!(invalid(e).contains("appears twice"));
    let e = reg
        .set_deployment(split("m", &[("1", 100), ("2", 0)]), "t")
        .unwrap_err();
    assert!(invalid(e).contains("0%"));
    assert!(matches!(
        reg.set_deployment(split("m", &[("challenger", 100)]), "t"),
        Err(RegistryError::NotFound { .. })
    ));
    let mut big = split("m", &[("1", 100)]);
    big.batching = Some(Batching {
        max_batch: 0,
        max_delay_us: 10,
    });
    assert!(invalid(reg.set_deployment(big, "t").unwrap_err()).contains("max_batch"));

    let mut d = split("m", &[("champion", 90), ("3", 10)]);
    d.shadow = Some("2".into());
    d.batching = Some(Batching {
        max_batch: 32,
        max_delay_us: 500,
    });
    let stored = reg.set_deployment(d.clone(), "alice").unwrap();
    assert_eq!(stored.updated_by, "alice");
    drop(reg);

    let reg = Registry::open(home.path()).unwrap();
    let back = reg.deployment("m").unwrap();
    assert_eq!(
        (back.routes.clone(), back.shadow.clone(), back.batching),
        (d.routes, d.shadow, d.batching)
    );
    assert_eq!(reg.deployments().unwrap().len(), 1);

    // Versions the deployment names cannot go without --force; with it, the deployment goes too.
    let e = reg.delete_version("m", 3, false, "t").unwrap_err();
    assert!(invalid(e).contains("is in its deployment"));
    reg.delete_version("m", 3, true, "t").unwrap();
    assert_eq!(reg.deployment("m").unwrap(), Deployment::default_for("m"));

    reg.set_deployment(split("m", &[("2", 100)]), "t").unwrap();
    reg.reset_deployment("m").unwrap();
    assert_eq!(reg.deployment("m").unwrap(), Deployment::default_for("m"));

    reg.set_deployment(split("m", &[("2", 100)]), "t").unwrap();
    reg.delete_model("m", true, "t").unwrap();
    assert!(reg.deployments().unwrap().is_empty());
}

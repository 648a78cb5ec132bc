//! `kiln experiments`, `kiln runs` and `kiln models`, run as a user runs them.
#![allow(clippy::unwrap_used)]

mod util;

use serde_json::{Value, json};
use util::Kiln;

fn home_args(k: &Kiln) -> Vec<String> {
    vec!["--home".into(), k.path("home").display().to_string()]
}

fn ok(k: &Kiln, args: &[&str]) -> String {
    let mut all: Vec<String> = home_args(k);
    all.extend(args.iter().map(|s| s.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    k.ok(&all)
}

fn fail(k: &Kiln, args: &[&str]) -> (i32, String) {
    let mut all: Vec<String> = home_args(k);
    all.extend(args.iter().map(|s| s.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let r = k.run(&all);
    assert_ne!(r.code, 0, "expected failure of {args:?}");
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    (r.code, r.stderr)
}

/// A run with a bundle artifact and metrics; returns its id.
fn trained_run(k: &Kiln, lr: &str, auc: &str) -> String {
    let run = ok(
        k,
        &[
            "runs",
            "create",
            "--experiment",
            "churn",
            "--param",
            &format!("lr={lr}"),
        ],
    )
    .trim()
    .to_string();
    for step in 0..3 {
        ok(
            k,
            &[
                "runs",
                "log",
                &run,
                "--metric",
                &format!("auc={auc}"),
                "--metric",
                "loss=0.5",
                "--step",
                &step.to_string(),
            ],
        );
    }
    let bundle = k.path(&format!("bundle-{run}"));
    std::fs::create_dir_all(&bundle).unwrap();
    std::fs::write(bundle.join("kiln-model.json"), format!("{{\"lr\": {lr}}}")).unwrap();
    std::fs::write(bundle.join("weights.safetensors"), [1u8, 2, 3]).unwrap();
    ok(
        k,
        &[
            "runs",
            "artifact",
            &run,
            bundle.to_str().unwrap(),
            "--name",
            "model",
        ],
    );
    ok(k, &["runs", "end", &run]);
    run
}

#[test]
fn track_register_promote_and_audit() {
    let k = Kiln::new();
    let a = trained_run(&k, "0.01", "0.81");
    let b = trained_run(&k, "0.1", "0.92");
    let c = trained_run(&k, "1.0", "0.77");

    let listed: Value = serde_json::from_str(&ok(
        &k,
        &[
            "runs",
            "list",
            "--where",
            "metrics.auc > 0.8",
            "--order-by",
            "metrics.auc desc",
            "--json",
        ],
    ))
    .unwrap();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [b.as_str(), a.as_str()]);

    let compare = ok(&k, &["runs", "compare", &a, &b, &c]);
    assert!(
        compare.contains("≠  params.lr     0.01      0.1       1"),
        "{compare}"
    );
    assert!(
        compare.contains("   metrics.loss  0.5       0.5       0.5"),
        "{compare}"
    );

    ok(&k, &["models", "register", "churn", "--run", &a]);
    ok(&k, &["models", "register", "churn", "--run", &b]);
    ok(
        &k,
        &[
            "models", "promote", "churn", "1", "--expect", "none", "--by", "ana", "--reason",
            "first",
        ],
    );
    let before = ok(&k, &["models", "history", "churn", "--json"]);
    let first: Vec<Value> = serde_json::from_str(&before).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    ok(
        &k,
        &[
            "models", "promote", "churn", "2", "--expect", "1", "--by", "bo", "--reason",
            "auc 0.92",
        ],
    );

    // A promotion based on a stale view loses and names the fix.
    let (code, err) = fail(&k, &["models", "promote", "churn", "1", "--expect", "1"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("points to version 2, not version 1 as expected"),
        "{err}"
    );

    // What was in production at the time of the first promotion.
    let at = (first[0]["at_ms"].as_i64().unwrap() + 999) / 1000;
    let at = humantime_iso(at);
    let then: Value = serde_json::from_str(&ok(
        &k,
        &[
            "models", "history", "churn", "--alias", "champion", "--at", &at, "--json",
        ],
    ))
    .unwrap();
    assert_eq!(then["version"], 1);

    let shown: Value =
        serde_json::from_str(&ok(&k, &["models", "show", "churn", "--json"])).unwrap();
    assert_eq!(shown["aliases"]["champion"], 2);
    assert_eq!(shown["versions"][0]["stage"], "Archived");
    assert_eq!(shown["versions"][1]["stage"], "Production");
    assert_eq!(shown["versions"][1]["version"]["metrics"]["auc"], 0.92);

    let (_, err) = fail(&k, &["models", "delete", "churn", "--version", "2"]);
    assert!(
        err.contains("move the alias first or delete with --force"),
        "{err}"
    );

    let out = k.path("exported");
    ok(
        &k,
        &[
            "models",
            "export",
            "churn",
            "--version",
            "champion",
            "-o",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read(out.join("weights.safetensors")).unwrap(),
        [1, 2, 3]
    );
}

/// `2026-11-28T14:00:00Z` for Unix seconds, without a date library in the test.
fn humantime_iso(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[test]
fn a_second_process_is_told_who_owns_the_home() {
    let k = Kiln::new();
    let reg = kiln_core::registry::Registry::open(&k.path("home")).unwrap();
    let (code, err) = fail(&k, &["runs", "list"]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("is in use by process {}", std::process::id())),
        "{err}"
    );
    drop(reg);
    ok(&k, &["runs", "list"]);
}

#[test]
fn bad_names_and_unknown_things() {
    let k = Kiln::new();
    let (_, err) = fail(&k, &["runs", "show", "zz"]);
    assert!(err.contains("`zz` is not a run id"), "{err}");
    let (_, err) = fail(&k, &["models", "show", "nope"]);
    assert!(err.contains("no model `nope`"), "{err}");
    let long = "x".repeat(300);
    let (_, err) = fail(&k, &["experiments", "create", &long]);
    assert!(
        err.contains("experiment name is 300 bytes; the limit is 256"),
        "{err}"
    );

    // A name that is not UTF-8 is refused by the command line itself.
    use std::os::unix::ffi::OsStrExt;
    let out = k
        .command()
        .args([
            "--home",
            k.path("home").to_str().unwrap(),
            "experiments",
            "create",
        ])
        .arg(std::ffi::OsStr::from_bytes(b"caf\xe9"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid UTF-8"));
}

#[test]
fn a_damaged_artifact_is_reported() {
    let k = Kiln::new();
    let run = trained_run(&k, "0.1", "0.9");
    ok(&k, &["models", "register", "m", "--run", &run]);
    let shown: Value = serde_json::from_str(&ok(&k, &["runs", "show", &run, "--json"])).unwrap();
    let digest = shown["artifacts"][0]["digest"].as_str().unwrap();
    let hex = digest.strip_prefix("blake3:").unwrap();
    let object = k
        .path("home")
        .join("artifacts/objects")
        .join(&hex[..2])
        .join(&hex[2..]);
    std::fs::write(&object, b"{\"files\": []}").unwrap();
    let (code, err) = fail(
        &k,
        &[
            "models",
            "export",
            "m",
            "--version",
            "1",
            "-o",
            k.path("out").to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("does not match its digest"), "{err}");
}

#[test]
fn a_damaged_registry_is_named_by_check_and_restored_from_a_backup() {
    let k = Kiln::new();
    let run = trained_run(&k, "0.1", "0.9");
    ok(&k, &["models", "register", "churn", "--run", &run]);
    ok(&k, &["models", "alias", "set", "churn", "champion", "1"]);
    assert!(ok(&k, &["registry", "check"]).contains("checks clean"));
    let backup = k.path("backup-1");
    let b = backup.display().to_string();
    let summary: Value =
        serde_json::from_str(&ok(&k, &["registry", "backup", &b, "--json"])).unwrap();
    assert!(summary["artifacts"].as_u64().unwrap() >= 3, "{summary}");
    // A second backup to the same place is refused, not merged.
    let (_, e) = fail(&k, &["registry", "backup", &b]);
    assert!(e.contains("already exists"), "{e}");
    // The backup is a home of its own: it opens and checks clean.
    let r = k.run(&["--home", &b, "registry", "check"]);
    assert_eq!(r.code, 0, "{}", r.stdout);

    // Damage every stored object, as a failing disk would.
    let objects = k.path("home/artifacts/objects");
    for dir in std::fs::read_dir(&objects).unwrap() {
        for f in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            let f = f.unwrap().path();
            let mut bytes = std::fs::read(&f).unwrap();
            bytes[0] ^= 0xff;
            std::fs::write(&f, bytes).unwrap();
        }
    }
    let (code, _) = fail(&k, &["registry", "check"]);
    assert_eq!(code, 3);
    let checked: Value = serde_json::from_str(
        &k.run(&[
            "--home",
            k.path("home").to_str().unwrap(),
            "registry",
            "check",
            "--json",
        ])
        .stdout,
    )
    .unwrap();
    let problems = checked["problems"].as_array().unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p["subject"] == "model churn version 1"),
        "{checked}"
    );
    // A backup of a damaged store is refused: it would keep the damage.
    let (_, e) = fail(
        &k,
        &["registry", "backup", k.path("backup-2").to_str().unwrap()],
    );
    assert!(e.contains("does not match its digest"), "{e}");

    let restored = ok(&k, &["registry", "restore", &b]);
    assert!(restored.contains("is kept"), "{restored}");
    assert!(ok(&k, &["registry", "check"]).contains("checks clean"));
    let out = k.path("exported");
    ok(
        &k,
        &[
            "models",
            "export",
            "churn",
            "--version",
            "1",
            "-o",
            out.to_str().unwrap(),
        ],
    );
    assert!(out.join("weights.safetensors").exists());
}

/// Every change can answer as JSON, with ids as people type them, for scripts.
#[test]
fn changes_answer_as_json() {
    let k = Kiln::new();
    let created: Value =
        serde_json::from_str(&ok(&k, &["experiments", "create", "scripted", "--json"])).unwrap();
    assert_eq!(created["name"], "scripted");
    let run: Value = serde_json::from_str(&ok(
        &k,
        &["runs", "create", "--experiment", "scripted", "--json"],
    ))
    .unwrap();
    let id = run["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 8, "{run}");
    let logged: Value = serde_json::from_str(&ok(
        &k,
        &[
            "runs", "log", &id, "--metric", "auc=0.9", "--step", "2", "--json",
        ],
    ))
    .unwrap();
    assert_eq!(
        (&logged["metrics"], &logged["step"]),
        (&json!(1), &json!(2))
    );
    std::fs::create_dir_all(k.path("bundle")).unwrap();
    let bundle = k.file("bundle/weights.safetensors", [1u8, 2, 3]);
    let artifact: Value = serde_json::from_str(&ok(
        &k,
        &[
            "runs",
            "artifact",
            &id,
            bundle.parent().unwrap().to_str().unwrap(),
            "--name",
            "model",
            "--json",
        ],
    ))
    .unwrap();
    assert_eq!(artifact["kind"], "directory");
    let ended: Value = serde_json::from_str(&ok(&k, &["runs", "end", &id, "--json"])).unwrap();
    assert_eq!(ended["status"], "finished");
    let version: Value = serde_json::from_str(&ok(
        &k,
        &["models", "register", "scripted", "--run", &id, "--json"],
    ))
    .unwrap();
    assert_eq!(version["version"], 1);
    let promoted: Value =
        serde_json::from_str(&ok(&k, &["models", "promote", "scripted", "1", "--json"])).unwrap();
    assert_eq!(
        (
            &promoted["stage"],
            &promoted["event"]["alias"],
            &promoted["event"]["to"]
        ),
        (&json!("Production"), &json!("champion"), &json!(1))
    );
}

//! `kiln sweep`: one command, trials in parallel, every trial a child run of the sweep's run.
#![allow(clippy::unwrap_used)]

mod util;

use serde_json::Value;
use util::Kiln;

fn kiln(k: &Kiln, args: &[&str]) -> util::Run {
    k.run_home(args)
}

#[test]
fn a_24_trial_random_sweep_two_at_a_time() {
    let k = Kiln::new();
    let r = kiln(
        &k,
        &[
            "sweep",
            "--config",
            "examples/breast_cancer.sweep.toml",
            "--data",
            "examples/data/breast_cancer.csv",
            "--target",
            "label",
            "--register",
            "bc",
            "--json",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let out: Value = serde_json::from_str(&r.stdout).unwrap();
    let trials = out["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 24);
    let scores: Vec<f64> = trials
        .iter()
        .map(|t| t["validation"].as_f64().unwrap())
        .collect();
    assert!(
        scores.windows(2).all(|w| w[0] <= w[1]),
        "best (lowest loss) first: {scores:?}"
    );
    assert_eq!(out["registered"]["version"], 1);

    let runs: Value =
        serde_json::from_str(&kiln(&k, &["runs", "list", "--limit", "100", "--json"]).stdout)
            .unwrap();
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 25);
    let parent = out["parent"].as_str().unwrap();
    let children = runs.iter().filter(|r| r["parent"] == parent).count();
    assert_eq!(children, 24);
    let listed: Value =
        serde_json::from_str(&kiln(&k, &["runs", "list", "--parent", parent, "--json"]).stdout)
            .unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 24);
    let best_run = trials[0]["run"].as_str().unwrap();
    let versions: Value =
        serde_json::from_str(&kiln(&k, &["models", "versions", "bc", "--json"]).stdout).unwrap();
    assert_eq!(
        versions["versions"][0]["version"]["run_id"],
        u64::from_str_radix(best_run, 16).unwrap()
    );
}

/// `kiln sweep --config CONFIG` on breast cancer, its `--json` answer; the sweep must succeed.
fn sweep_json(k: &Kiln, config: &std::path::Path) -> Value {
    let r = kiln(
        k,
        &[
            "sweep",
            "--config",
            config.to_str().unwrap(),
            "--data",
            "examples/data/breast_cancer.csv",
            "--target",
            "label",
            "--json",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    serde_json::from_str(&r.stdout).unwrap()
}

#[test]
fn grid_with_successive_halving() {
    let k = Kiln::new();
    let config = k.file(
        "grid.toml",
        "method = \"grid\"\nparallel = 2\nrungs = 2\neta = 2\nmetric = \"accuracy\"\n\n[base]\nmodel = \"logistic\"\nepochs = 8\npatience = 0\n\n[space]\nlr = { choice = [0.001, 0.01, 0.1] }\nbatch_size = { choice = [32, 128] }\n",
    );
    let out = sweep_json(&k, &config);
    let trials = out["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 6, "every grid point is a trial");
    // Rung 1 trains all 6 for 4 epochs; the best 3 go on to 8 epochs.
    let full = trials.iter().filter(|t| t["epochs"] == 8).count();
    assert_eq!(full, 3, "{trials:?}");

    let bad = k.file(
        "bad.toml",
        "method = \"grid\"\n[space]\nlr = { log_uniform = [0.001, 0.1] }\n",
    );
    let r = kiln(
        &k,
        &[
            "sweep",
            "--config",
            bad.to_str().unwrap(),
            "--data",
            "examples/data/breast_cancer.csv",
            "--target",
            "label",
        ],
    );
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("grid search takes `choice` lists; `lr` is a range"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_sweep_over_boosted_trees_halves_by_rounds() {
    let k = Kiln::new();
    let config = k.file(
        "trees.toml",
        "method = \"grid\"\nrungs = 2\neta = 2\nmetric = \"roc_auc\"\n\n[base]\nmodel = \"gbdt\"\ntrees = 20\npatience = 0\n\n[space]\nleaves = { choice = [4, 15] }\nshrinkage = { choice = [0.05, 0.3] }\n",
    );
    let out = sweep_json(&k, &config);
    let trials = out["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 4);
    // Rung 1 boosts all 4 for 10 rounds; the best 2 go on to 20.
    let full = trials.iter().filter(|t| t["epochs"] == 20).count();
    let half = trials.iter().filter(|t| t["epochs"] == 10).count();
    assert_eq!((full, half), (2, 2), "{trials:?}");
    assert!(
        trials[0]["validation"].as_f64().unwrap() > 0.9,
        "{trials:?}"
    );
}

#[test]
fn a_model_based_search_reports_each_options_importance() {
    let k = Kiln::new();
    let config = k.file(
        "tpe.toml",
        "method = \"tpe\"\ntrials = 12\nparallel = 2\nseed = 3\nbudget = \"10m\"\nmetric = \"log_loss\"\n\n[base]\nmodel = \"gbdt\"\ntrees = 30\n\n[space]\nshrinkage = { log_uniform = [0.01, 0.5] }\nleaves = { int_uniform = [2, 31] }\nmin_child_rows = { choice = [5, 20, 80] }\n",
    );
    let args = |config: &std::path::Path| {
        vec![
            "sweep".to_string(),
            "--config".into(),
            config.display().to_string(),
            "--data".into(),
            "examples/data/breast_cancer.csv".into(),
            "--target".into(),
            "label".into(),
        ]
    };
    let out = sweep_json(&k, &config);
    let trials = out["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 12);
    assert!(trials.iter().all(|t| t["error"].is_null()), "{trials:?}");
    let importance = out["importance"].as_array().unwrap();
    assert_eq!(importance.len(), 3, "{importance:?}");
    let total: f64 = importance
        .iter()
        .map(|i| i["share"].as_f64().unwrap())
        .sum();
    assert!((total - 1.0).abs() < 1e-9, "{importance:?}");

    for (text, needle) in [
        ("budget = \"soon\"", "budget = \"soon\""),
        (
            "rungs = 2",
            "successive halving (rungs) needs method = \"random\" or \"grid\"",
        ),
    ] {
        let bad = k.file(
            "bad.toml",
            format!("method = \"tpe\"\ntrials = 4\n{text}\n[space]\nlr = {{ log_uniform = [0.001, 0.1] }}\n"),
        );
        let a = args(&bad);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let r = kiln(&k, &a);
        assert_eq!(r.code, 1, "{text}: {}", r.stderr);
        assert!(r.stderr.contains(needle), "{text}: {}", r.stderr);
    }
}

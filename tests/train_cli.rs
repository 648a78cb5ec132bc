//! `kiln train` and `kiln predict`, run as a user runs them.
#![allow(clippy::unwrap_used)]

mod util;

use serde_json::Value;
use util::Kiln;

const BC: &str = "examples/data/breast_cancer.csv";

fn kiln(k: &Kiln, args: &[&str]) -> util::Run {
    k.run_home(args)
}

#[test]
fn train_register_predict() {
    let k = Kiln::new();
    let r = kiln(
        &k,
        &[
            "train",
            "--data",
            BC,
            "--target",
            "label",
            "--epochs",
            "20",
            "--register",
            "bc",
            "--json",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let out: Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(
        out["test_metrics"]["accuracy"].as_f64().unwrap() >= 0.95,
        "{out}"
    );
    assert_eq!(out["registered"]["version"], 1);
    assert_eq!(out["rows"]["test"], 114);
    let baseline = out["baseline_metrics"]["accuracy"].as_f64().unwrap();
    assert!(baseline < 0.8, "{out}");

    // Without --json, one line compares the model with the commonest class.
    let r = kiln(
        &k,
        &["train", "--data", BC, "--target", "label", "--epochs", "5"],
    );
    assert!(
        r.stdout
            .contains("baseline (the commonest class for every row): accuracy")
            && r.stdout.contains("; this model: "),
        "{}",
        r.stdout
    );

    let preds = k.path("preds.csv");
    let r = kiln(
        &k,
        &[
            "predict",
            "--model",
            "bc:1",
            "--data",
            BC,
            "-o",
            preds.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let text = std::fs::read_to_string(&preds).unwrap();
    assert_eq!(text.lines().count(), 570);
    assert!(text.starts_with("predicted_label,p_0,p_1\n"), "{text}");

    let runs: Value = serde_json::from_str(&kiln(&k, &["runs", "list", "--json"]).stdout).unwrap();
    assert_eq!(runs[0]["status"], "finished");
    assert!(runs[0]["metrics"]["validation_loss"].as_f64().is_some());
    assert!(
        runs[0]["lineage"]["dataset_fingerprint"]
            .as_str()
            .unwrap()
            .starts_with("blake3:")
    );
}

fn fails(k: &Kiln, args: &[&str], code: i32, needle: &str) {
    let r = kiln(k, args);
    assert_eq!(r.code, code, "{args:?}: {}", r.stderr);
    assert!(r.stderr.contains(needle), "{args:?}: {}", r.stderr);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
}

#[test]
fn bad_input_gives_clear_errors() {
    let k = Kiln::new();
    fails(
        &k,
        &["train", "--data", BC, "--target", "labl"],
        1,
        "target column `labl` is not in the data; did you mean `label`?",
    );

    let one_class = k.file("one.csv", "x,y\n1,a\n2,a\n3,a\n4,a\n5,a\n");
    fails(
        &k,
        &[
            "train",
            "--data",
            one_class.to_str().unwrap(),
            "--target",
            "y",
        ],
        1,
        "has one class only (\"a\")",
    );

    let text = k.file(
        "text.csv",
        "x,y\n1,0\n2,1\nabc,0\n4,1\n5,0\n6,1\n7,0\n8,1\n9,0\n10,1\n",
    );
    let spec = k.file(
        "spec.toml",
        "[[features]]\ncolumns = [\"x\"]\nencode = \"standardize\"\n",
    );
    fails(
        &k,
        &[
            "train",
            "--data",
            text.to_str().unwrap(),
            "--target",
            "y",
            "--spec",
            spec.to_str().unwrap(),
        ],
        1,
        "column `x` is categorical; encode = \"standardize\" needs a numeric column",
    );

    let config = k.file("train.toml", "test_fraction = 1.0\n");
    fails(
        &k,
        &[
            "train",
            "--data",
            BC,
            "--target",
            "label",
            "--config",
            config.to_str().unwrap(),
        ],
        1,
        "the training split is empty",
    );

    fails(
        &k,
        &[
            "train",
            "--data",
            BC,
            "--target",
            "mean area",
            "--lr",
            "1000000",
            "--optimizer",
            "sgd",
            "--epochs",
            "3",
        ],
        1,
        "training diverged: the loss became",
    );
    let failed: Value =
        serde_json::from_str(&kiln(&k, &["runs", "list", "--status", "failed", "--json"]).stdout)
            .unwrap();
    assert_eq!(
        failed.as_array().unwrap().len(),
        4,
        "each training that failed stays a failed run"
    );

    fails(
        &k,
        &[
            "train", "--data", BC, "--target", "label", "--model", "forest",
        ],
        2,
        "possible values: logistic, mlp, wide-deep",
    );
    if !cfg!(feature = "gpu") {
        fails(
            &k,
            &[
                "train", "--data", BC, "--target", "label", "--device", "gpu",
            ],
            1,
            "built without the `gpu` feature",
        );
    }
}

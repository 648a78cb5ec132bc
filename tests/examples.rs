//! Every example runs: the quickstart script, with the freshly built binary.
#![allow(clippy::unwrap_used)]

mod util;

#[test]
fn quickstart_runs_end_to_end() {
    let k = util::Kiln::new();
    let out = k.path("quickstart");
    let r = k
        .script("examples/quickstart.sh")
        .env("OUT", &out)
        // A small, quick pipeline run in the unoptimised build the tests use.
        .env(
            "PIPELINE_ARGS",
            "--param rows=3000 --param epochs=3 --param min_auc=0.6",
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(
        r.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(stdout.contains("569 rows, 31 columns"));
    assert!(stdout.contains("569 rows match the schema"));
    assert!(
        stdout.contains("breast-cancer version 1 is now in Production"),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#"TF Serving:  {"predictions":[{"label":"#),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#"MLflow:      {"predictions":["#),
        "{stdout}"
    );
    // The pipeline ran, then ran again from its cache, and its model is served.
    assert!(
        stdout.contains("pipeline `retrain-ctr` run 1 succeeded"),
        "{stdout}"
    );
    assert!(stdout.contains("(10 of 10 steps cached"), "{stdout}");
    assert!(
        stdout.contains(r#"ctr (pushed by the pipeline), MLflow: {"predictions":["#),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#"pipelines:   [{"pipeline":"retrain-ctr""#),
        "{stdout}"
    );
    for f in [
        "breast_cancer.schema.json",
        "breast_cancer.fitted.json",
        "breast_cancer.features.parquet",
        "ctr.fitted.json",
        "ctr.features.csv",
        "breast_cancer.predictions.csv",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
}

#[test]
fn the_repl_session_example_replays() {
    let k = util::Kiln::new();
    let out = k.ok(&["repl", "--script", "examples/session.kiln"]);
    assert!(out.contains("bc: 569 rows, 31 columns"), "{out}");
    assert!(out.contains("kiln> runs compare $prev $last"), "{out}");
    assert!(out.contains("≠  params.model"), "{out}");
    assert!(out.contains("train_loss"), "{out}");
    assert!(
        out.contains("breast-cancer version 1 is now in Production"),
        "{out}"
    );
    assert!(out.contains("predicted_label"), "{out}");
    assert!(out.contains("best of the session"), "{out}");
    assert!(out.contains(": 4 trials"), "{out}");
    assert!(
        out.contains("pipeline `retrain-ctr` run 1 succeeded"),
        "{out}"
    );
}

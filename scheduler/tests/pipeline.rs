//! Pipeline files: every diagnostic at once, each at its line; the plan in parallel levels.
#![allow(clippy::unwrap_used)]

mod common;

use common::parse;
use kiln_scheduler::{Severity, levels};

/// Parses `text` and checks that its errors are exactly `expected`: (line, part of the message).
fn check(text: &str, expected: &[(usize, &str)]) {
    let parsed = parse(text);
    let errors: Vec<(usize, String)> = parsed
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| (d.line, d.message.clone()))
        .collect();
    assert_eq!(errors.len(), expected.len(), "{errors:#?}");
    for ((line, message), (want_line, want)) in errors.iter().zip(expected) {
        assert_eq!(line, want_line, "{message}");
        assert!(message.contains(want), "{message:?} does not say {want:?}");
    }
}

#[test]
fn the_example_pipeline_is_clean_and_plans_in_levels() {
    let text = include_str!("../../examples/pipelines/retrain.toml");
    let parsed = parse(text);
    assert!(parsed.diagnostics.is_empty(), "{:#?}", parsed.diagnostics);
    let p = parsed.pipeline.unwrap();
    assert_eq!(p.name, "retrain-ctr");
    assert_eq!(p.steps.len(), 10);
    assert_eq!(p.schedule.as_ref().unwrap().cron, "0 3 * * *");
    let levels = levels(&p).unwrap();
    assert_eq!(levels[0], ["generate"]);
    assert_eq!(levels.last().unwrap(), &["push"]);
    // `report` and `infra-validate` both only need `evaluate` and earlier steps: one level.
    assert!(levels.iter().any(|l| l.contains(&"report".to_string()) && l.contains(&"infra-validate".to_string())));
}

#[test]
fn every_problem_is_reported_at_its_line() {
    check(
        r#"name = "p"
[params]
rows = 10

[schedule]
cron = "0 25 * * *"

[[steps]]
id = "a"
uses = "ingest"
with = { path = "${params.row}" }

[[steps]]
id = "b"
needs = ["a", "zz"]
uses = "trian"

[[steps]]
id = "c"
needs = ["d"]
uses = "statistics"
with = { data = "${steps.a.data}", bins = 3 }

[[steps]]
id = "d"
needs = ["c"]
run = "echo ${steps.b.x}"
timeout = "ten minutes"

[[steps]]
id = "a"
run = "true"
"#,
        &[
            (6, "cron expression \"0 25 * * *\""),
            (11, "unknown parameter `row`; did you mean `rows`?"),
            (15, "needs unknown step `zz`"),
            (16, "unknown component `trian`; did you mean `train`?"),
            (19, "the steps form a cycle: c → d → c"),
            (22, "but does not need `a`"),
            (22, "takes no argument `bins`"),
            (27, "does not need `b`"),
            (28, "timeout \"ten minutes\""),
            (31, "step id `a` is used twice"),
        ],
    );
}

#[test]
fn shape_errors_give_no_pipeline_but_a_line() {
    let parsed = parse("name = \"p\"\n[[steps]]\nid = \"a\"\nuse = \"ingest\"\n");
    assert!(parsed.pipeline.is_none());
    assert_eq!(parsed.diagnostics.len(), 1);
    assert_eq!(parsed.diagnostics[0].line, 4);
    assert!(
        parsed.diagnostics[0]
            .message
            .contains("unknown field `use`"),
        "{:?}",
        parsed.diagnostics
    );
    let parsed = parse("name = \"p\"\n[[steps]\n");
    assert_eq!(parsed.diagnostics[0].line, 2);
}

#[test]
fn uses_and_run_and_required_arguments() {
    check(
        r#"name = "p"

[[steps]]
id = "both"
uses = "ingest"
run = "true"

[[steps]]
id = "neither"

[[steps]]
id = "bare"
uses = "train"
with = { data = "x" }

[[steps]]
id = "cmd"
run = "true"
with = { x = 1 }
"#,
        &[
            (5, "has both `uses` and `run`"),
            (9, "has neither `uses`"),
            (13, "needs `with.target`"),
            (19, "`with.x` is for `uses` steps"),
        ],
    );
    check("name = \"p\"\n", &[(1, "no steps")]);
}

#[test]
fn files_that_components_read_must_exist() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spec.toml"), "").unwrap();
    let p = parse(
        "name = \"m\"\n[[steps]]\nid = \"t\"\nuses = \"train\"\nwith = { data = \"gone.csv\", target = \"y\", model = \"mlp\", spec = \"spec.toml\" }\n\n[[steps]]\nid = \"e\"\nneeds = [\"t\"]\nuses = \"evaluate\"\nwith = { model = \"${steps.t.model}\", data = \"gone.csv\" }\n",
    );
    assert!(!p.has_errors(), "{:?}", p.diagnostics);
    let missing = kiln_scheduler::pipeline::missing_files(
        p.pipeline.as_ref().unwrap(),
        common::CATALOGUE,
        dir.path(),
    );
    let messages: Vec<&str> = missing.iter().map(|d| d.message.as_str()).collect();
    // `model = "mlp"` is a model kind for `train`, not a file; templated paths are not checked.
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(
        messages[0].starts_with("step `t`: `with.data` names gone.csv"),
        "{messages:?}"
    );
    assert_eq!((missing[0].line, missing[1].line), (3, 8));
}

#[test]
fn parallel_is_a_count_of_steps() {
    let step = "\n[[steps]]\nid = \"a\"\nrun = \"true\"\n";
    check(
        &format!("name = \"p\"\nparallel = 0\n{step}"),
        &[(
            2,
            "parallel = 0: give how many steps may run at once, 1 to 256",
        )],
    );
    check(
        &format!("name = \"p\"\nparallel = -3\n{step}"),
        &[(2, "1 to 256")],
    );
    let parsed = parse(&format!("name = \"p\"\nparallel = 2\n{step}"));
    assert_eq!(parsed.pipeline.unwrap().parallel, Some(2));
}

#[test]
fn a_value_a_component_does_not_report_is_a_warning_with_a_did_you_mean() {
    let parsed = parse(
        "name = \"w\"\n[[steps]]\nid = \"i\"\nuses = \"ingest\"\nwith = { path = \"${date}.csv\" }\n\n[[steps]]\nid = \"s\"\nneeds = [\"i\"]\nuses = \"statistics\"\nwith = { data = \"${steps.i.dat}\" }\n\n[[steps]]\nid = \"r\"\nneeds = [\"i\"]\nrun = \"wc -l ${steps.i.data} ${steps.i.copy.csv}\"\n",
    );
    assert!(!parsed.has_errors(), "{:#?}", parsed.diagnostics);
    let warnings: Vec<&str> = parsed
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Warning)
        .map(|d| d.message.as_str())
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].contains("reports data, rows, not `dat`")
            && warnings[0].contains("did you mean `data`"),
        "{}",
        warnings[0]
    );
}

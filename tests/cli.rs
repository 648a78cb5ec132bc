//! The `kiln data` commands, run as a user runs them.
#![allow(clippy::unwrap_used)]

mod util;

use serde_json::Value;
use util::Kiln;

const BREAST_CANCER: &str = "examples/data/breast_cancer.csv";

fn column<'a>(stats: &'a Value, name: &str) -> &'a Value {
    stats["columns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap()
}

fn quantile(col: &Value, q: f64) -> f64 {
    col["numeric"]["quantiles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| (x["q"].as_f64().unwrap() - q).abs() < 1e-9)
        .unwrap()["value"]
        .as_f64()
        .unwrap()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

#[test]
fn describe_breast_cancer() {
    let k = Kiln::new();
    let text = k.ok(&["data", "describe", BREAST_CANCER]);
    assert!(
        text.starts_with("examples/data/breast_cancer.csv: 569 rows, 31 columns"),
        "{text}"
    );
    assert!(text.contains(" mean radius "), "{text}");

    let stats: Value =
        serde_json::from_str(&k.ok(&["data", "describe", BREAST_CANCER, "--json"])).unwrap();
    assert_eq!(stats["rows"], 569);
    assert_eq!(stats["columns"].as_array().unwrap().len(), 31);
    // Reference values computed independently with Python's statistics module
    // (mean, stdev, and quantiles with method="inclusive", which is NumPy's linear method).
    let radius = column(&stats, "mean radius");
    assert_eq!(radius["type"], "float");
    assert_eq!(radius["count"], 569);
    assert_eq!(radius["missing"], 0);
    assert!(close(
        radius["numeric"]["mean"].as_f64().unwrap(),
        14.127291739894552
    ));
    assert!(close(
        radius["numeric"]["std_dev"].as_f64().unwrap(),
        3.5240488262120775
    ));
    assert_eq!(radius["numeric"]["min"], 6.981);
    assert_eq!(radius["numeric"]["max"], 28.11);
    let area = column(&stats, "worst area");
    assert!(close(
        area["numeric"]["mean"].as_f64().unwrap(),
        880.5831282952548
    ));
    assert!(close(quantile(area, 0.25), 515.3));
    assert!(close(quantile(area, 0.5), 686.5));
    assert!(close(quantile(area, 0.75), 1084.0));
    let label = column(&stats, "label");
    assert_eq!(label["type"], "integer");
    assert!(close(
        label["numeric"]["mean"].as_f64().unwrap(),
        357.0 / 569.0
    ));
}

#[test]
fn schema_then_validate() {
    let k = Kiln::new();
    let schema = k.path("schema.toml");
    k.ok(&[
        "data",
        "schema",
        BREAST_CANCER,
        "-o",
        schema.to_str().unwrap(),
    ]);
    let out = k.ok(&[
        "data",
        "validate",
        BREAST_CANCER,
        "--schema",
        schema.to_str().unwrap(),
    ]);
    assert!(out.contains("569 rows match the schema"), "{out}");

    // A corrupted copy: a column dropped, a value out of range, a string in a numeric column.
    let text = std::fs::read_to_string(util::repo_root().join(BREAST_CANCER)).unwrap();
    let mut lines: Vec<String> = text
        .lines()
        .map(|l| l.split(',').skip(1).collect::<Vec<_>>().join(","))
        .collect();
    let mut fields: Vec<String> = lines[5].split(',').map(String::from).collect();
    fields[0] = "99999".into();
    fields[1] = "oops".into();
    lines[5] = fields.join(",");
    let bad = k.file("bad.csv", lines.join("\n"));
    let r = k.run(&[
        "data",
        "validate",
        bad.to_str().unwrap(),
        "--schema",
        schema.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    let report: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(report["passed"], false);
    let found: Vec<(String, String)> = report["anomalies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["column"].as_str().unwrap().to_string(),
                a["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expect = [
        ("mean radius", "missing_column"),
        ("mean texture", "out_of_range"),
        ("mean perimeter", "wrong_type"),
    ];
    assert_eq!(
        found,
        expect.map(|(c, k)| (c.to_string(), k.to_string())).to_vec()
    );
    // Warnings alone pass unless asked to fail.
    let extra = k.file(
        "extra.csv",
        text.lines()
            .map(|l| format!("{l},1"))
            .collect::<Vec<_>>()
            .join("\n")
            .replacen(",1", ",extra", 1),
    );
    let r = k.run(&[
        "data",
        "validate",
        extra.to_str().unwrap(),
        "--schema",
        schema.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("column `extra` is not in the schema"),
        "{}",
        r.stdout
    );
    let r = k.run(&[
        "data",
        "validate",
        extra.to_str().unwrap(),
        "--schema",
        schema.to_str().unwrap(),
        "--fail-on",
        "warning",
    ]);
    assert_eq!(r.code, 3);
}

#[test]
fn transform_fit_then_apply_gives_the_same_file() {
    let k = Kiln::new();
    let fitted = k.path("fitted.json");
    let a = k.path("a.csv");
    let b = k.path("b.csv");
    k.ok(&[
        "data",
        "transform",
        BREAST_CANCER,
        "--spec",
        "examples/breast_cancer.spec.toml",
        "--fit-out",
        fitted.to_str().unwrap(),
        "-o",
        a.to_str().unwrap(),
    ]);
    let summary: Value = serde_json::from_str(&k.ok(&[
        "data",
        "transform",
        BREAST_CANCER,
        "--fitted",
        fitted.to_str().unwrap(),
        "-o",
        b.to_str().unwrap(),
        "--json",
    ]))
    .unwrap();
    assert_eq!(summary["rows"], 569);
    assert_eq!(summary["dense_names"].as_array().unwrap().len(), 30 + 8);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let text = std::fs::read_to_string(&a).unwrap();
    assert_eq!(text.lines().count(), 570);
    assert!(text.starts_with("mean radius,mean texture,"));
}

#[test]
fn synth_is_deterministic_and_readable() {
    let k = Kiln::new();
    let a = k.path("a.csv");
    k.ok(&[
        "data",
        "synth",
        "ctr",
        "--rows",
        "3000",
        "--seed",
        "11",
        "-o",
        a.to_str().unwrap(),
    ]);
    let b = k.ok(&["data", "synth", "ctr", "--rows", "3000", "--seed", "11"]);
    assert_eq!(std::fs::read_to_string(&a).unwrap(), b);
    let stats: Value =
        serde_json::from_str(&k.ok(&["data", "describe", a.to_str().unwrap(), "--json"])).unwrap();
    assert_eq!(stats["rows"], 3000);
    assert_eq!(column(&stats, "c1")["categorical"]["distinct"], 10);
    assert!(column(&stats, "c4")["missing"].as_u64().unwrap() > 0);
    let ctr = column(&stats, "click")["numeric"]["mean"].as_f64().unwrap();
    assert!((0.2..0.5).contains(&ctr), "click rate {ctr}");
    let fitted: Value = serde_json::from_str(&k.ok(&[
        "data",
        "transform",
        a.to_str().unwrap(),
        "--spec",
        "examples/ctr.spec.toml",
        "--json",
    ]))
    .unwrap();
    assert_eq!(fitted["id_names"], serde_json::json!(["c3", "c4", "c5"]));
}

#[test]
fn errors_name_file_and_line_and_exit_1() {
    let k = Kiln::new();
    let ragged = k.file("ragged.csv", "a,b\n1,2\n3\n");
    let r = k.run(&["data", "describe", ragged.to_str().unwrap()]);
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr.trim(),
        format!("error: {}:3: expected 2 fields, found 1", ragged.display())
    );

    let spec = k.file("spec.toml", "[[features]]\ncolumns = [\"mean radiuss\"]\n");
    let r = k.run(&[
        "data",
        "transform",
        BREAST_CANCER,
        "--spec",
        spec.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("unknown column `mean radiuss`; did you mean `mean radius`?"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("panicked"));
}

#[test]
fn usage_errors_exit_2() {
    let k = Kiln::new();
    let r = k.run(&["data", "transform", BREAST_CANCER]);
    assert_eq!(r.code, 2);
    let r = k.run(&["data", "describe", BREAST_CANCER, "--type", "label"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("expected NAME=TYPE"), "{}", r.stderr);
}

#[test]
fn completions_and_manual_pages_come_from_the_command_line_itself() {
    let k = Kiln::new();
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let script = k.ok(&["completions", shell]);
        assert!(
            script.contains("train") && script.contains("target"),
            "{shell}"
        );
    }
    // bash completes a partial command and a flag with the generated script.
    let script = k.file("kiln.bash", k.ok(&["completions", "bash"]));
    let complete = |line: &str| -> String {
        let words: Vec<&str> = line.split(' ').collect();
        let program = format!(
            "source {}; COMP_WORDS=({}); COMP_CWORD={}; _kiln kiln '{}' '{}'; echo \"${{COMPREPLY[@]}}\"",
            script.display(),
            words
                .iter()
                .map(|w| format!("'{w}'"))
                .collect::<Vec<_>>()
                .join(" "),
            words.len() - 1,
            words[words.len() - 1],
            words[words.len() - 2],
        );
        let out = std::process::Command::new("bash")
            .args(["-c", &program])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        complete("kiln tra")
            .split_whitespace()
            .any(|w| w == "train")
    );
    assert!(complete("kiln train --tar").contains("--target"));
    let r = k.run(&["completions", "tcsh"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("possible values: bash"), "{}", r.stderr);
    // One manual page per command, each naming its options.
    let dir = k.path("man");
    k.ok(&["man", "-o", dir.to_str().unwrap()]);
    let train = std::fs::read_to_string(dir.join("kiln-train.1")).unwrap();
    assert!(
        train.starts_with(".ie") && train.contains(".TH kiln-train 1"),
        "{train}"
    );
    assert!(train.contains("The column to predict"), "{train}");
    assert!(dir.join("kiln-models-promote.1").exists());
    assert!(k.ok(&["man"]).contains(".SH NAME"));
}

//! `kiln models import`, `kiln predict` and the pipeline `import` component with ONNX models
//! made by real converters (`tests/fixtures/onnx/make.py`), run as a user runs them.
#![allow(clippy::unwrap_used)]

mod util;

use serde_json::Value;
use util::Kiln;

const FIXTURES: &str = "tests/fixtures/onnx";

fn fixture(name: &str) -> String {
    format!("{FIXTURES}/{name}.onnx")
}

fn models(k: &Kiln) -> Value {
    serde_json::from_str(&k.ok(&["models", "list", "--json"])).unwrap()
}

fn expected(name: &str) -> Value {
    let path = util::repo_root()
        .join(FIXTURES)
        .join(format!("{name}.expected.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn an_imported_classifier_predicts_what_onnxruntime_does() {
    let k = Kiln::new();
    let out = k.ok(&[
        "models",
        "import",
        "cancer",
        &fixture("logreg"),
        "--reference",
        "examples/data/breast_cancer.csv",
        "--json",
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["version"], 1, "{v}");
    assert_eq!(v["task"], "binary_classification");
    assert_eq!(v["labels"], serde_json::json!(["0", "1"]));
    assert_eq!(v["signature"].as_array().unwrap().len(), 30);
    assert_eq!(v["signature"][0]["name"], "mean radius");
    assert!(
        v["metrics"]["reference_roc_auc"].as_f64().unwrap() > 0.99,
        "{v}"
    );

    // `kiln predict` runs the graph; the held-out rows (the last 20%) match onnxruntime's.
    let csv = k.path("p.csv");
    k.ok(&[
        "predict",
        "--model",
        "cancer:1",
        "--data",
        "examples/data/breast_cancer.csv",
        "-o",
        csv.to_str().unwrap(),
    ]);
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "predicted_label,p_0,p_1");
    let e = expected("logreg");
    let probs = e["outputs"]["output_probability"].as_array().unwrap();
    let labels = e["outputs"]["output_label"].as_array().unwrap();
    let first = 1 + (569.0f64 * 0.8) as usize;
    for (i, (p, l)) in probs.iter().zip(labels).enumerate() {
        let cells: Vec<&str> = lines[first + i].split(',').collect();
        assert_eq!(cells[0], l.to_string(), "row {i}");
        let p1: f64 = cells[2].parse().unwrap();
        assert!(
            (p1 - p[1].as_f64().unwrap()).abs() < 1e-5,
            "row {i}: {p1} vs {p}"
        );
    }
}

#[test]
fn a_graph_of_numbers_without_a_reference_names_its_columns_and_says_how_to_name_them() {
    let k = Kiln::new();
    let out = k.ok(&["models", "import", "area", &fixture("lightgbm_regressor")]);
    assert!(out.contains("regression, 29 input columns"), "{out}");
    assert!(out.contains("input_0…input_28"), "{out}");
    assert!(out.contains("--reference"), "{out}");
    // Several classes and no names for them: refused, saying how to name them.
    let r = k.run(&["models", "import", "digits", &fixture("cnn")]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("--labels"), "{}", r.stderr);
    let out = k.ok(&[
        "models",
        "import",
        "digits",
        &fixture("cnn"),
        "--labels",
        "0,1,2,3,4,5,6,7,8,9",
    ]);
    assert!(
        out.contains("multi-class classification, 64 input columns"),
        "{out}"
    );
}

#[test]
fn bad_models_are_refused_at_import_with_the_reason_and_change_nothing() {
    let k = Kiln::new();
    let whole = std::fs::read(util::repo_root().join(fixture("logreg"))).unwrap();
    let truncated = k.file("truncated.onnx", &whole[..whole.len() / 2]);
    let garbage = k.file("notes.onnx", "these are my notes, not a model");
    let cases: Vec<(String, Vec<&str>, &str)> = vec![
        (truncated.display().to_string(), vec![], "not an ONNX model"),
        (garbage.display().to_string(), vec![], "not an ONNX model"),
        (
            fixture("bad_operator"),
            vec![],
            "operators kiln does not run: Hardmax",
        ),
        (
            fixture("bad_dynamic"),
            vec![],
            "dimension of unknown size after the batch",
        ),
        (
            fixture("bad_input"),
            vec!["--reference", "examples/data/breast_cancer.csv"],
            "the graph reads shoe size, which the reference does not have",
        ),
        (fixture("bad_nan"), vec![], "not finite"),
        (
            fixture("logreg"),
            vec!["--labels", "a,b,c"],
            "--labels names 3 classes; the graph's classifier has 2",
        ),
        (
            fixture("logreg"),
            vec!["--reference", "examples/data/digits.csv"],
            "takes 30 numbers per row, but the reference has 64 columns",
        ),
    ];
    for (file, extra, message) in cases {
        let mut args = vec!["models", "import", "m", file.as_str()];
        args.extend(extra);
        let r = k.run(&args);
        assert_eq!(r.code, 1, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(message), "{args:?}: {}", r.stderr);
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    }
    assert_eq!(
        models(&k)["models"].as_array().map_or(0, Vec::len),
        0,
        "{}",
        models(&k)
    );
    let runs: Value = serde_json::from_str(&k.ok(&["runs", "list", "--json"])).unwrap();
    assert_eq!(runs["runs"].as_array().map_or(0, Vec::len), 0, "{runs}");
}

#[test]
fn a_pipeline_imports_a_model_trained_elsewhere_judges_it_against_a_kiln_champion_and_pushes_it() {
    let k = Kiln::new();
    // The champion: a kiln-trained logistic regression.
    k.ok(&[
        "train",
        "--data",
        "examples/data/breast_cancer.csv",
        "--target",
        "label",
        "--model",
        "logistic",
        "--epochs",
        "2",
        "--register",
        "cancer",
    ]);
    k.ok(&["models", "alias", "set", "cancer", "champion", "1"]);
    let logreg = util::repo_root().join(fixture("logreg"));
    let pipeline = k.file(
        "onnx.toml",
        format!(
            r#"name = "bring-your-own"

[[steps]]
id = "fit"
run = "cp '{}' ${{outputs}}/model.onnx"

[[steps]]
id = "import"
needs = ["fit"]
uses = "import"
with = {{ file = "${{steps.fit.model.onnx}}", reference = "{data}" }}

[[steps]]
id = "evaluate"
needs = ["import"]
uses = "evaluate"
with = {{ model = "${{steps.import.model}}", data = "{data}", baseline = "cancer@champion", min_improvement = -1.0 }}

[[steps]]
id = "infra-validate"
needs = ["import"]
uses = "infra-validate"
with = {{ model = "${{steps.import.model}}" }}

[[steps]]
id = "push"
needs = ["evaluate", "infra-validate"]
uses = "push"
with = {{ model = "${{steps.import.model}}", name = "cancer", blessing = "${{steps.evaluate.blessed}}" }}
"#,
            logreg.display(),
            data = util::repo_root()
                .join("examples/data/breast_cancer.csv")
                .display()
        ),
    );
    let out = k.ok(&["pipeline", "run", pipeline.to_str().unwrap()]);
    assert!(out.contains("succeeded"), "{out}");
    let run: Value = serde_json::from_str(&k.ok(&["pipeline", "show", "1", "--json"])).unwrap();
    let step = |id: &str| {
        run["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(
        step("import")["values"]["task"],
        "binary_classification",
        "{run}"
    );
    let evaluate = step("evaluate");
    assert_eq!(evaluate["values"]["blessed"], "true", "{evaluate}");
    assert!(
        evaluate["values"]["reason"]
            .as_str()
            .unwrap()
            .contains("against"),
        "{evaluate}"
    );
    assert_eq!(step("push")["values"]["version"], "2", "{run}");
    let model: Value =
        serde_json::from_str(&k.ok(&["models", "show", "cancer", "--json"])).unwrap();
    assert_eq!(model["aliases"]["champion"], 2, "{model}");
}

#[test]
fn an_onnx_file_posted_to_the_api_becomes_a_served_version_and_hostile_uploads_change_nothing() {
    let k = Kiln::new();
    let served = util::Served::start(&k, &["serve", "--addr", "127.0.0.1:0", "--token", "s3cret"]);
    let bytes = std::fs::read(util::repo_root().join(fixture("logreg"))).unwrap();
    let post = |path: &str, body: &[u8], headers: &[(&str, &str)]| {
        let mut r = util::agent()
            .post(format!("{}{path}", served.url))
            .header("Content-Type", "application/octet-stream");
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let mut r = r.send(body).unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    };
    let token = ("Authorization", "Bearer s3cret");
    // What a hostile page or client can send: no token, a foreign origin, garbage, a path in an
    // option, an unknown option, a name that is a path.
    type Attempt<'a> = (&'a str, Vec<u8>, Vec<(&'a str, &'a str)>, u16);
    let hostile: Vec<Attempt> = vec![
        ("/api/models/up/versions", bytes.clone(), vec![], 401),
        (
            "/api/models/up/versions",
            bytes.clone(),
            vec![token, ("Origin", "http://evil.example")],
            403,
        ),
        (
            "/api/models/up/versions",
            b"\x08\x07garbage".to_vec(),
            vec![token],
            400,
        ),
        (
            "/api/models/up/versions?output=../../etc/passwd",
            bytes.clone(),
            vec![token],
            400,
        ),
        (
            "/api/models/up/versions?reference=/etc/passwd",
            bytes.clone(),
            vec![token],
            400,
        ),
        (
            "/api/models/..%2F..%2Fetc/versions",
            bytes.clone(),
            vec![token],
            400,
        ),
    ];
    for (path, body, headers, status) in hostile {
        let (got, answer) = post(path, &body, &headers);
        assert_eq!(got, status, "{path}: {answer}");
    }
    let (status, answer) = post(
        "/api/models/up/versions?description=from+a+notebook",
        &bytes,
        &[token],
    );
    assert_eq!(status, 200, "{answer}");
    let v: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(v["version"], 1, "{v}");
    assert_eq!(v["description"], "from a notebook");
    let listed: Value =
        serde_json::from_str(&k.ok(&["models", "list", "--json", "--server", &served.url]))
            .unwrap();
    assert_eq!(listed["models"].as_array().unwrap().len(), 1, "{listed}");
    let versions: Value = serde_json::from_str(&k.ok(&[
        "models",
        "versions",
        "up",
        "--json",
        "--server",
        &served.url,
    ]))
    .unwrap();
    assert_eq!(
        versions["versions"].as_array().unwrap().len(),
        1,
        "{versions}"
    );
    // Promoted, it answers over V2 like any model.
    k.ok(&[
        "models",
        "promote",
        "up",
        "1",
        "--server",
        &served.url,
        "--token",
        "s3cret",
    ]);
    let x: Vec<f64> = expected("logreg")["rows"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let body = serde_json::json!({"inputs": [{"name": "x", "shape": [1, 30], "datatype": "FP64", "data": x}]});
    let mut r = util::agent()
        .post(format!("{}/v2/models/up/infer", served.url))
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .unwrap();
    let answer = r.body_mut().read_to_string().unwrap();
    assert_eq!(r.status().as_u16(), 200, "{answer}");
    let a: Value = serde_json::from_str(&answer).unwrap();
    let p = a["outputs"][1]["data"][1].as_f64().unwrap();
    let want = expected("logreg")["outputs"]["output_probability"][0][1]
        .as_f64()
        .unwrap();
    assert!((p - want).abs() < 1e-5, "{p} vs {want}");
}

/// The predictions of `kiln predict` on a CSV, as rows of cells.
fn predictions(k: &Kiln, model: &str, data: &str) -> Vec<Vec<String>> {
    let out = k.path(&format!("{}.csv", model.replace(':', "-")));
    k.ok(&[
        "predict",
        "--model",
        model,
        "--data",
        data,
        "-o",
        out.to_str().unwrap(),
    ]);
    std::fs::read_to_string(out)
        .unwrap()
        .lines()
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

#[test]
fn an_exported_model_imported_back_predicts_the_same() {
    let k = Kiln::new();
    let data = "examples/data/breast_cancer.csv";
    for (name, model) in [("net", "mlp"), ("trees", "gbdt")] {
        k.ok(&[
            "train",
            "--data",
            data,
            "--target",
            "label",
            "--model",
            model,
            "--epochs",
            "2",
            "--trees",
            "15",
            "--register",
            name,
        ]);
        let file = k.path(&format!("{name}.onnx"));
        let out = k.ok(&[
            "models",
            "export",
            name,
            "--version",
            "1",
            "--format",
            "onnx",
            "-o",
            file.to_str().unwrap(),
            "--json",
        ]);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["transform_included"], true, "{v}");
        assert_eq!(v["inputs"].as_array().unwrap().len(), 30, "{v}");
        k.ok(&[
            "models",
            "import",
            &format!("{name}-again"),
            file.to_str().unwrap(),
            "--reference",
            data,
        ]);
        let (a, b) = (
            predictions(&k, &format!("{name}:1"), data),
            predictions(&k, &format!("{name}-again:1"), data),
        );
        assert_eq!(a.len(), 570);
        for (x, y) in a.iter().zip(&b).skip(1) {
            assert_eq!(x[0], y[0], "{x:?} vs {y:?}");
            let (p, q): (f64, f64) = (x[2].parse().unwrap(), y[2].parse().unwrap());
            assert!((p - q).abs() < 1e-5, "{name}: {x:?} vs {y:?}");
        }
    }
    // An imported model is already a graph: its file is in its bundle, not re-exported.
    let x = k.path("x.onnx");
    let r = k.run(&[
        "models",
        "export",
        "trees-again",
        "--version",
        "1",
        "--format",
        "onnx",
        "-o",
        x.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("an imported graph already"),
        "{}",
        r.stderr
    );
    assert!(!x.exists());
}

#[test]
fn an_imported_model_is_imported_through_a_server_and_served_with_a_canary_a_shadow_and_batching() {
    let k = Kiln::new();
    let data = "examples/data/breast_cancer.csv";
    // A kiln champion and an imported challenger, both registered through the running server.
    let served = util::Served::start(&k, &["serve", "--addr", "127.0.0.1:0", "--token", "s3cret"]);
    let remote = ["--server", served.url.as_str(), "--token", "s3cret"];
    let mut train = vec![
        "train",
        "--data",
        data,
        "--target",
        "label",
        "--model",
        "logistic",
        "--epochs",
        "2",
        "--register",
        "bc",
    ];
    train.extend(remote);
    k.ok(&train);
    let mut import = vec![
        "models",
        "import",
        "bc",
        "tests/fixtures/onnx/forest.onnx",
        "--reference",
        data,
    ];
    import.extend(remote);
    let out = k.ok(&import);
    assert!(out.contains("registered bc version 2"), "{out}");
    let mut alias = vec!["models", "alias", "set", "bc", "champion", "1"];
    alias.extend(remote);
    k.ok(&alias);
    let mut deploy = vec![
        "deploy",
        "bc",
        "--split",
        "1=50,2=50",
        "--shadow",
        "2",
        "--batch",
        "8",
        "--batch-delay-us",
        "500",
    ];
    deploy.extend(remote);
    k.ok(&deploy);
    // Rows from the forest fixture: version 2 answers as onnxruntime does, version 1 as kiln's
    // network does; the bare name answers from both.
    let e = expected("forest");
    let rows = e["rows"].as_array().unwrap();
    let want = e["outputs"]["probabilities"].as_array().unwrap();
    let mut seen = std::collections::BTreeSet::new();
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let url = served.url.clone();
            let row = rows[i].clone();
            std::thread::spawn(move || {
                let body = serde_json::json!({"inputs": [{"name": "x", "shape": [1, 30], "datatype": "FP64", "data": row}]});
                let mut got = vec![];
                for path in ["/v2/models/bc/versions/2/infer", "/v2/models/bc/infer"] {
                    let mut r = util::agent()
                        .post(format!("{url}{path}"))
                        .header("Content-Type", "application/json")
                        .send(body.to_string())
                        .unwrap();
                    let text = r.body_mut().read_to_string().unwrap();
                    assert_eq!(r.status().as_u16(), 200, "{text}");
                    got.push(serde_json::from_str::<Value>(&text).unwrap());
                }
                (i, got)
            })
        })
        .collect();
    for h in handles {
        let (i, got) = h.join().unwrap();
        let p = got[0]["outputs"][1]["data"][1].as_f64().unwrap();
        assert!(
            (p - want[i][1].as_f64().unwrap()).abs() < 1e-5,
            "row {i}: {p} vs {}",
            want[i]
        );
        seen.insert(got[1]["model_version"].as_str().unwrap().to_string());
    }
    assert!(!seen.is_empty());
    // The reverse of the pipeline test: a kiln challenger judged against an imported champion.
    let mut champion = vec!["models", "alias", "set", "bc", "champion", "2"];
    champion.extend(remote);
    k.ok(&champion);
    drop(served);
    let pipeline = k.file(
        "judge.toml",
        format!(
            r#"name = "judge"

[[steps]]
id = "train"
uses = "train"
with = {{ data = "{data}", target = "label", model = "logistic", epochs = 2 }}

[[steps]]
id = "evaluate"
needs = ["train"]
uses = "evaluate"
with = {{ model = "${{steps.train.model}}", data = "{data}", baseline = "bc@champion" }}
"#,
            data = util::repo_root().join(data).display()
        ),
    );
    k.ok(&["pipeline", "run", pipeline.to_str().unwrap()]);
    let run: Value = serde_json::from_str(&k.ok(&["pipeline", "show", "1", "--json"])).unwrap();
    let evaluate = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "evaluate")
        .unwrap()
        .clone();
    assert!(
        evaluate["values"]["reason"]
            .as_str()
            .unwrap()
            .contains("of bc version 2 (champion)"),
        "{evaluate}"
    );
    assert!(
        evaluate["values"]["baseline"]
            .as_str()
            .unwrap()
            .parse::<f64>()
            .unwrap()
            > 0.9,
        "{evaluate}"
    );
}

#[test]
fn a_network_ending_at_logits_is_refused_until_told_and_then_answers_their_softmax() {
    let k = Kiln::new();
    let data = "examples/data/breast_cancer.csv";
    let file = fixture("mlp_logits");
    let r = k.run(&["models", "import", "net", &file, "--reference", data]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("does not hold probabilities"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("--scores logits"), "{}", r.stderr);
    k.ok(&[
        "models",
        "import",
        "net",
        &file,
        "--reference",
        data,
        "--scores",
        "logits",
    ]);
    let got = predictions(&k, "net:1", data);
    let e = expected("mlp_logits");
    let first = 1 + (569.0f64 * 0.8) as usize;
    for (i, z) in e["outputs"]["logits"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let (a, b) = (z[0].as_f64().unwrap(), z[1].as_f64().unwrap());
        let p = 1.0 / (1.0 + (a - b).exp());
        let kiln: f64 = got[first + i][2].parse().unwrap();
        assert!((kiln - p).abs() < 1e-5, "row {i}: {kiln} vs {p}");
    }
}

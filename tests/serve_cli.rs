//! `kiln serve` end to end on a real socket: models trained by the trainer (burn) answer over
//! the three protocols exactly as `kiln predict` scores them offline; `kiln deploy` changes a
//! running server; SIGTERM shuts it down cleanly.
#![allow(clippy::unwrap_used)]

mod util;

use serde_json::{Value, json};
use util::Kiln;

/// A running `kiln serve` on a free port.
struct Server;

impl Server {
    fn start(k: &Kiln, extra: &[&str]) -> util::Served {
        let mut args = vec!["serve", "--addr", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        util::Served::start(k, &args)
    }
}

fn post(url: &str, body: &Value) -> (u16, Value) {
    let mut r = util::agent().post(url).send_json(body).unwrap();
    (r.status().as_u16(), r.body_mut().read_json().unwrap())
}

/// `kiln predict`'s output: label and class-1 probability per row.
fn offline(k: &Kiln, model: &str, data: &str) -> Vec<(String, f64)> {
    let out = k
        .path(&format!("{model}.predictions.csv"))
        .display()
        .to_string();
    let home = k.path("home").display().to_string();
    k.ok(&[
        "--home",
        &home,
        "predict",
        "--model",
        &format!("{model}@champion"),
        "--data",
        data,
        "-o",
        &out,
    ]);
    let mut reader = csv::Reader::from_path(&out).unwrap();
    reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            (r[0].to_string(), r[2].parse().unwrap())
        })
        .collect()
}

fn records(path: &str, skip: &str, n: usize) -> (Vec<String>, Vec<Value>) {
    let mut reader = csv::Reader::from_path(util::repo_root().join(path)).unwrap();
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_string)
        .collect();
    let rows = reader
        .records()
        .take(n)
        .map(|r| {
            let r = r.unwrap();
            let mut m = serde_json::Map::new();
            for (h, v) in header.iter().zip(r.iter()) {
                if h == skip {
                    continue;
                }
                // Numbers as numbers, other text as text, empty fields as missing values.
                let value = if v.is_empty() {
                    Value::Null
                } else {
                    v.parse::<f64>().map_or_else(|_| json!(v), |x| json!(x))
                };
                m.insert(h.clone(), value);
            }
            Value::Object(m)
        })
        .collect();
    (header.into_iter().filter(|h| h != skip).collect(), rows)
}

fn assert_matches(what: &str, got: &[(String, f64)], want: &[(String, f64)]) {
    assert_within(what, got, want, 1e-5);
}

/// Labels equal and class-1 probabilities within `tolerance` of offline's, row by row.
fn assert_within(what: &str, got: &[(String, f64)], want: &[(String, f64)], tolerance: f64) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.0, w.0, "{what}: row {i} label");
        assert!(
            (g.1 - w.1).abs() < tolerance,
            "{what}: row {i}: {} vs {} offline",
            g.1,
            w.1
        );
    }
}

/// A TF Serving `:predict` of `rows`: label and class-1 probability per row.
fn tf_predict(url: &str, model: &str, rows: &[Value]) -> Vec<(String, f64)> {
    let (status, body) = post(
        &format!("{url}/v1/models/{model}:predict"),
        &json!({ "instances": rows }),
    );
    assert_eq!(status, 200, "{body}");
    body["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["label"].as_str().unwrap().to_string(),
                p["probabilities"][1].as_f64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn served_predictions_equal_offline_predictions_over_every_protocol() {
    let k = Kiln::new();
    let data = "examples/data/breast_cancer.csv";
    k.ok(&[
        "train",
        "--data",
        data,
        "--target",
        "label",
        "--spec",
        "examples/breast_cancer.spec.toml",
        "--hidden",
        "8",
        "--epochs",
        "5",
        "--register",
        "bc",
    ]);
    k.ok(&["models", "alias", "set", "bc", "champion", "1"]);
    let n = 25;
    let want: Vec<(String, f64)> = offline(&k, "bc", data).into_iter().take(n).collect();
    let (columns, rows) = records(data, "label", n);

    let server = Server::start(&k, &["--models", "bc", "--log-sample", "1"]);
    let url = &server.url;

    // Open Inference Protocol V2: one FP64 tensor in signature order.
    let flat: Vec<Value> = rows
        .iter()
        .flat_map(|r| columns.iter().map(|c| r[c].clone()).collect::<Vec<_>>())
        .collect();
    let (status, body) = post(
        &format!("{url}/v2/models/bc/infer"),
        &json!({ "inputs": [{ "name": "x", "shape": [n, columns.len()], "datatype": "FP64", "data": flat }] }),
    );
    assert_eq!(status, 200, "{body}");
    let labels = body["outputs"][0]["data"].as_array().unwrap();
    let probs = body["outputs"][1]["data"].as_array().unwrap();
    let v2: Vec<(String, f64)> = labels
        .iter()
        .zip(probs.chunks(2))
        .map(|(l, p)| (l.as_str().unwrap().to_string(), p[1].as_f64().unwrap()))
        .collect();
    assert_matches("V2", &v2, &want);

    // TF Serving, row format.
    let (status, body) = post(
        &format!("{url}/v1/models/bc:predict"),
        &json!({ "instances": rows }),
    );
    assert_eq!(status, 200, "{body}");
    let tf: Vec<(String, f64)> = body["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["label"].as_str().unwrap().to_string(),
                p["probabilities"][1].as_f64().unwrap(),
            )
        })
        .collect();
    assert_matches("TF Serving", &tf, &want);

    // MLflow, dataframe_split: labels.
    let data_rows: Vec<Value> = rows
        .iter()
        .map(|r| json!(columns.iter().map(|c| r[c].clone()).collect::<Vec<_>>()))
        .collect();
    let (status, body) = post(
        &format!("{url}/invocations"),
        &json!({ "dataframe_split": { "columns": columns, "data": data_rows } }),
    );
    assert_eq!(status, 200, "{body}");
    let ml: Vec<String> = body["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(ml, want.iter().map(|w| w.0.clone()).collect::<Vec<_>>());

    // The registry belongs to the server: the command line says so and points at the API.
    let r = k.run_home(&["deploy", "bc", "--split", "champion=100"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("in use by") && r.stderr.contains("HTTP"),
        "{}",
        r.stderr
    );
    // Through the API it works.
    let out = k.ok(&[
        "deploy", "bc", "--split", "1=100", "--batch", "16", "--server", url,
    ]);
    assert!(
        out.contains("100%") && out.contains("batching: up to 16 rows"),
        "{out}"
    );
    let (status, _) = post(
        &format!("{url}/v1/models/bc:predict"),
        &json!({ "instances": rows }),
    );
    assert_eq!(status, 200);
    let out = k.ok(&["deploy", "bc", "--reset", "--server", url]);
    assert!(
        out.contains("champion") && out.contains("100%") && !out.contains("batching: up to"),
        "{out}"
    );
    // The server's live drift windows, through the same client as every --server command.
    let out = k.ok(&["monitor", "drift", "bc", "--server", url, "--json"]);
    let live: Value = serde_json::from_str(&out).unwrap();
    assert!(live[0]["rows"].as_u64().unwrap() >= 25, "{live}");

    assert_eq!(server.stop(), 0, "SIGTERM ends the server cleanly");
    // Afterwards the registry is free again and has the deployment.
    let out = k.ok(&["deploy", "bc", "--reset", "--json"]);
    assert!(out.contains("\"champion\""), "{out}");
    // Every request was logged; the drift report replays the log (too few rows to judge).
    let out = k.ok(&["monitor", "drift", "bc"]);
    assert!(
        out.contains("mean radius") && out.contains("label"),
        "{out}"
    );
    assert!(out.contains("nothing judged yet"), "{out}");
    let out = k.ok(&["monitor", "drift", "bc", "--json"]);
    let report: Value = serde_json::from_str(&out).unwrap();
    assert!(report[0]["rows"].as_u64().unwrap() >= 25, "{report}");
    let r = k.run(&["monitor", "drift", "nope"]);
    assert!(r.stderr.contains("no model `nope`"), "{}", r.stderr);
}

#[test]
fn a_wide_and_deep_model_with_categories_serves_as_it_scores_offline() {
    let k = Kiln::new();
    let data = k.path("ctr.csv").display().to_string();
    k.ok(&[
        "data", "synth", "ctr", "--rows", "3000", "--seed", "3", "-o", &data,
    ]);
    k.ok(&[
        "train",
        "--data",
        &data,
        "--target",
        "click",
        "--spec",
        "examples/ctr.spec.toml",
        "--model",
        "wide-deep",
        "--hidden",
        "16",
        "--epochs",
        "2",
        "--register",
        "ctr",
    ]);
    k.ok(&["models", "alias", "set", "ctr", "champion", "1"]);
    let n = 30;
    let want: Vec<(String, f64)> = offline(&k, "ctr", &data).into_iter().take(n).collect();
    let (_, rows) = records(&data, "click", n);
    let server = Server::start(&k, &[]);
    let got = tf_predict(&server.url, "ctr", &rows);
    assert_matches("wide and deep", &got, &want);
    assert_eq!(server.stop(), 0);
}

/// Gradient-boosted trees with the default transform (missing numbers kept, categories as ids)
/// answer over the V2 and TF Serving protocols what `kiln predict` scores offline, within 1e-6.
#[test]
fn gradient_boosted_trees_serve_as_they_score_offline() {
    let k = Kiln::new();
    let data = k.path("ctr.csv").display().to_string();
    k.ok(&[
        "data", "synth", "ctr", "--rows", "4000", "--seed", "5", "-o", &data,
    ]);
    let trained = k.ok(&[
        "train",
        "--data",
        &data,
        "--target",
        "click",
        "--model",
        "gbdt",
        "--trees",
        "40",
        "--register",
        "trees",
        "--json",
    ]);
    let trained: Value = serde_json::from_str(&trained).unwrap();
    assert!(
        trained["test_metrics"]["roc_auc"].as_f64().unwrap() > 0.6,
        "{trained}"
    );
    assert!(trained["feature_importance"][0]["share"].as_f64().unwrap() > 0.0);
    k.ok(&["models", "alias", "set", "trees", "champion", "1"]);
    let n = 60;
    let want: Vec<(String, f64)> = offline(&k, "trees", &data).into_iter().take(n).collect();
    let (names, rows) = records(&data, "click", n);
    assert!(
        rows.iter()
            .any(|r| r.as_object().unwrap().values().any(Value::is_null)),
        "the rows carry missing values"
    );
    let server = Server::start(&k, &[]);
    let got = tf_predict(&server.url, "trees", &rows);
    assert_within("TF Serving", &got, &want, 1e-6);
    // V2 over JSON, one tensor per column (BYTES for categories); its tensors have no missing
    // value, so it carries the rows without one.
    let full: Vec<usize> = rows
        .iter()
        .enumerate()
        .filter(|(_, r)| !r.as_object().unwrap().values().any(Value::is_null))
        .map(|(i, _)| i)
        .collect();
    let inputs: Vec<Value> = names
        .iter()
        .map(|name| {
            let values: Vec<Value> = full.iter().map(|i| rows[*i][name].clone()).collect();
            let bytes = values[0].is_string();
            json!({
                "name": name,
                "datatype": if bytes { "BYTES" } else { "FP64" },
                "shape": [values.len()],
                "data": values,
            })
        })
        .collect();
    let (status, body) = post(
        &format!("{}/v2/models/trees/infer", server.url),
        &json!({ "inputs": inputs }),
    );
    assert_eq!(status, 200, "{body}");
    let outputs = body["outputs"].as_array().unwrap();
    let labels = outputs.iter().find(|o| o["name"] == "label").unwrap()["data"]
        .as_array()
        .unwrap()
        .clone();
    let probabilities = outputs
        .iter()
        .find(|o| o["name"] == "probabilities")
        .unwrap()["data"]
        .as_array()
        .unwrap()
        .clone();
    let got: Vec<(String, f64)> = full
        .iter()
        .enumerate()
        .map(|(j, _)| {
            (
                labels[j].as_str().unwrap().to_string(),
                probabilities[2 * j + 1].as_f64().unwrap(),
            )
        })
        .collect();
    let want_full: Vec<(String, f64)> = full.iter().map(|i| want[*i].clone()).collect();
    assert_within("V2", &got, &want_full, 1e-6);
    assert_eq!(server.stop(), 0);
}

/// `kiln train --register` then `kiln serve`: nothing serves until a version is promoted, and
/// every hint on the way names a command that works when followed.
#[test]
fn the_hints_of_an_unpromoted_model_lead_to_a_served_one() {
    let k = Kiln::new();
    let data = "examples/data/breast_cancer.csv";
    k.ok(&[
        "train",
        "--data",
        data,
        "--target",
        "label",
        "--epochs",
        "2",
        "--register",
        "bc",
    ]);
    // Offline first: predicting with the model names the command that makes a version serve.
    let r = k.run(&["predict", "--model", "bc", "--data", data]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("promote a version to make it serve: `kiln models promote bc VERSION`"),
        "{}",
        r.stderr
    );
    let server = Server::start(&k, &[]);
    let url = &server.url;
    let (columns, rows) = records(data, "label", 2);
    assert_eq!(columns.len(), 30);
    let (status, body) = post(
        &format!("{url}/v1/models/bc:predict"),
        &json!({ "instances": rows }),
    );
    assert_eq!(status, 503, "{body}");
    let hint = body["error"].as_str().unwrap();
    assert!(
        hint.contains("`kiln models promote bc VERSION`, with --server URL"),
        "{hint}"
    );
    // Following it, with the running server, makes version 1 serve at once.
    let out = k.ok(&["models", "promote", "bc", "1", "--server", url]);
    assert!(
        out.contains("bc version 1 is now in Production (alias `champion`, which serving follows"),
        "{out}"
    );
    let (status, body) = post(
        &format!("{url}/v1/models/bc:predict"),
        &json!({ "instances": rows }),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["predictions"].as_array().unwrap().len(), 2);
    let shown: Value =
        serde_json::from_str(&k.ok(&["models", "show", "bc", "--json", "--server", url])).unwrap();
    assert_eq!(shown["versions"][0]["stage"], "Production", "{shown}");
    server.stop();
}

/// `KILN_LOG_FORMAT=json`: every line on stderr is one JSON object, and a request's line names
/// its method, path, model, version, status and latency.
#[test]
fn json_logs_are_one_object_per_line_with_the_request() {
    use std::io::{BufRead, BufReader};
    let k = Kiln::new();
    let home = k.path("home").display().to_string();
    let mut child = k
        .command()
        .args(["--home", home.as_str(), "serve", "--addr", "127.0.0.1:0"])
        .env("KILN_LOG", "info")
        .env("KILN_LOG_FORMAT", "json")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let message = first["fields"]["message"].as_str().unwrap().to_string();
    let url = message
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_string();
    let status = util::agent()
        .get(format!("{url}/v2/models/bc/versions/3/ready?secret=x"))
        .call()
        .unwrap()
        .status();
    assert_eq!(status, 404);
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap();
    let rest: Vec<Value> = lines
        .map(|l| {
            let l = l.unwrap();
            serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))
        })
        .collect();
    let request = rest
        .iter()
        .find(|l| l["fields"]["message"] == "finished processing request")
        .unwrap_or_else(|| panic!("no request line in {rest:?}"));
    assert_eq!(request["level"], "INFO");
    assert!(request["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(request["fields"]["status"], 404);
    assert!(request["fields"]["latency"].is_string());
    let span = &request["span"];
    assert_eq!(
        (
            &span["method"],
            &span["path"],
            &span["model"],
            &span["version"]
        ),
        (
            &json!("GET"),
            &json!("/v2/models/bc/versions/3/ready"),
            &json!("bc"),
            &json!("3")
        ),
        "{request}"
    );
    assert!(!request.to_string().contains("secret"), "{request}");
}

#[test]
fn one_exported_bundle_serves_with_no_registry_and_no_state() {
    let k = Kiln::new();
    let data = "examples/data/breast_cancer.csv";
    k.ok(&[
        "--home",
        k.path("home").to_str().unwrap(),
        "train",
        "--data",
        data,
        "--target",
        "label",
        "--model",
        "logistic",
        "--epochs",
        "3",
        "--register",
        "bc",
    ]);
    k.ok(&[
        "--home",
        k.path("home").to_str().unwrap(),
        "models",
        "promote",
        "bc",
        "1",
    ]);
    let bundle = k.path("exported");
    k.ok(&[
        "--home",
        k.path("home").to_str().unwrap(),
        "models",
        "export",
        "bc",
        "-o",
        bundle.to_str().unwrap(),
    ]);
    let want = offline(&k, "bc", data);
    // A directory that is not a bundle is refused with what makes one.
    let r = k.run(&["serve", "--bundle", "examples", "--addr", "127.0.0.1:0"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("kiln models export"), "{}", r.stderr);

    // Served from the bundle alone, with KILN_HOME pointing where nothing exists.
    let nowhere = k.path("nowhere").display().to_string();
    let (server, url) = start_kiln(
        &k,
        &[
            "--home",
            &nowhere,
            "serve",
            "--bundle",
            bundle.to_str().unwrap(),
            "--name",
            "cancer",
            "--addr",
            "127.0.0.1:0",
        ],
    );
    let (_, rows) = records(data, "label", 20);
    let got = tf_predict(&url, "cancer", &rows);
    assert_matches("a bundle served alone", &got, &want[..20]);
    let mut r = util::agent()
        .get(format!("{url}/v2/models/cancer"))
        .call()
        .unwrap();
    let meta: Value = r.body_mut().read_json().unwrap();
    assert_eq!(meta["versions"], json!(["1"]), "{meta}");
    // No registry behind it: the management API says so.
    let listed = util::agent()
        .get(format!("{url}/api/models"))
        .call()
        .unwrap();
    assert_eq!(listed.status().as_u16(), 404);
    let moved = util::agent()
        .put(format!("{url}/api/models/cancer/aliases/champion"))
        .header("Content-Type", "application/json")
        .send(r#"{"version": 1}"#)
        .unwrap();
    assert!(moved.status().is_client_error(), "{}", moved.status());
    let r = util::agent()
        .get(format!("{url}/v2/models/cancer/versions/2"))
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let mut server = server;
    let pid = server.0.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert_eq!(server.0.wait().unwrap().code(), Some(0));
    assert!(
        !k.path("nowhere").exists(),
        "a bundle server wrote to KILN_HOME"
    );
}

/// The `args` of the first container of a manifest at `pointer`.
fn manifest_args(path: &std::path::Path, pointer: &str) -> Vec<String> {
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    serde_json::from_value(doc.pointer(pointer).unwrap().clone()).unwrap()
}

#[test]
fn exported_manifests_run_the_command_lines_they_hold() {
    let k = Kiln::new();
    let home = k.path("home").display().to_string();
    let data = "examples/data/breast_cancer.csv";
    let kiln = |args: &[&str]| {
        let mut all = vec!["--home", home.as_str()];
        all.extend_from_slice(args);
        k.ok(&all)
    };
    kiln(&[
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
    ]);
    kiln(&[
        "models",
        "import",
        "bc",
        "tests/fixtures/onnx/forest.onnx",
        "--reference",
        data,
    ]);
    kiln(&["models", "promote", "bc", "1"]);
    kiln(&["models", "alias", "set", "bc", "challenger", "2"]);
    kiln(&[
        "deploy",
        "bc",
        "--split",
        "champion=90,challenger=10",
        "--shadow",
        "challenger",
    ]);
    let image = "ghcr.io/example/kiln:0.1.0";
    let kserve = k.path("kserve");
    let out = kiln(&[
        "deploy",
        "bc",
        "--export",
        "kserve",
        "-o",
        kserve.to_str().unwrap(),
        "--image",
        image,
        "--storage-uri",
        "s3://models/kiln/",
    ]);
    assert!(
        out.contains("the shadow `challenger` is not exported"),
        "{out}"
    );
    let isvc: Value = serde_json::from_str(
        &std::fs::read_to_string(kserve.join("inferenceservice.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(isvc["spec"]["predictor"]["canaryTrafficPercent"], 10);
    assert_eq!(
        isvc["spec"]["predictor"]["model"]["storageUri"],
        "s3://models/kiln/bc/2"
    );
    assert_eq!(isvc["spec"]["predictor"]["model"]["protocolVersion"], "v2");
    // A directory in use is refused.
    let mut again = vec![
        "--home",
        home.as_str(),
        "deploy",
        "bc",
        "--export",
        "kserve",
        "-o",
    ];
    again.extend([
        kserve.to_str().unwrap(),
        "--image",
        image,
        "--storage-uri",
        "s3://x",
    ]);
    assert_eq!(k.run(&again).code, 1);
    let plain = k.path("kubernetes");
    kiln(&[
        "deploy",
        "bc",
        "--export",
        "kubernetes",
        "-o",
        plain.to_str().unwrap(),
        "--image",
        image,
    ]);

    // Each manifest's command line, with the paths a pod would have mapped to the exported
    // bundles and the port to a free one on loopback, serves the version it names.
    let runtime = manifest_args(
        &kserve.join("servingruntime.json"),
        "/spec/containers/0/args",
    );
    let deployment = manifest_args(
        &plain.join("deployment.json"),
        "/spec/template/spec/containers/0/args",
    );
    let cases = [
        (runtime, "/mnt/models", kserve.join("bundles/bc/2")),
        (deployment, "/models", plain.join("bundles")),
    ];
    let (_, rows) = records(data, "label", 5);
    for (args, mount, dir) in cases {
        let args: Vec<String> = args
            .iter()
            .map(|a| {
                a.replace("{{.Name}}", "bc")
                    .replace("0.0.0.0:8080", "127.0.0.1:0")
                    .replacen(mount, dir.to_str().unwrap(), 1)
            })
            .collect();
        assert_eq!(args[0], "serve", "{args:?}");
        let pod_home = k.path("pod-home").display().to_string();
        let mut all: Vec<&str> = vec!["--home", pod_home.as_str()];
        all.extend(args.iter().map(String::as_str));
        let (_pod, url) = start_kiln(&k, &all);
        let got = tf_predict(&url, "bc", &rows);
        assert_eq!(got.len(), 5, "{args:?}");
    }
    assert!(!k.path("pod-home").exists());
}

/// A child process killed when dropped, so that a failing test leaves none behind.
struct Proc(std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `kiln ARGS` and returns it with the URL its log names.
fn start_kiln(k: &Kiln, args: &[&str]) -> (Proc, String) {
    use std::io::{BufRead, BufReader};
    let mut child = k
        .command()
        .args(args)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let url = loop {
        let line = lines.next().unwrap().unwrap();
        if line.starts_with("kiln ")
            && let Some(u) = line.split_whitespace().find(|w| w.starts_with("http://"))
        {
            break u.to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (Proc(child), url)
}

/// The version a server answers a bare-name request with.
fn served_version(url: &str, row: &Value) -> Result<String, String> {
    let body =
        json!({ "inputs": [{ "name": "x", "shape": [1, 30], "datatype": "FP64", "data": row }] });
    let mut r = util::agent()
        .post(format!("{url}/v2/models/bc/infer"))
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("{status}: {text}"));
    }
    let v: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    Ok(v["model_version"].as_str().unwrap_or_default().to_string())
}

#[test]
fn replicas_follow_a_central_registry_through_alias_moves_and_its_restart() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let k = Kiln::new();
    let home = k.path("home").display().to_string();
    let data = "examples/data/breast_cancer.csv";
    let kiln = |args: &[&str]| {
        let mut all = vec!["--home", home.as_str()];
        all.extend_from_slice(args);
        k.ok(&all)
    };
    kiln(&[
        "train",
        "--data",
        data,
        "--target",
        "label",
        "--model",
        "logistic",
        "--epochs",
        "1",
        "--register",
        "bc",
    ]);
    kiln(&[
        "models",
        "import",
        "bc",
        "tests/fixtures/onnx/logreg.onnx",
        "--reference",
        data,
    ]);
    kiln(&["models", "promote", "bc", "1"]);
    let (central, url) = start_kiln(
        &k,
        &[
            "--home",
            &home,
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--token",
            "s3cret",
        ],
    );
    // The first replica runs the command line of an exported Kubernetes Deployment.
    let manifests = k.path("manifests");
    k.ok(&[
        "deploy",
        "bc",
        "--export",
        "kubernetes",
        "-o",
        manifests.to_str().unwrap(),
        "--image",
        "ghcr.io/example/kiln:0.1.0",
        "--registry",
        &url,
        "--server",
        &url,
    ]);
    let cache = k.path("cache");
    let exported: Vec<String> = manifest_args(
        &manifests.join("deployment.json"),
        "/spec/template/spec/containers/0/args",
    )
    .iter()
    .map(|a| {
        a.replace("0.0.0.0:8080", "127.0.0.1:0")
            .replace("/cache", cache.to_str().unwrap())
    })
    .collect();
    assert_eq!(
        exported[..3],
        ["serve", "--registry", url.as_str()],
        "{exported:?}"
    );
    assert!(!manifests.join("bundles").exists());
    let replicas: Vec<(Proc, String)> = (0..3)
        .map(|i| {
            let none = k.path(&format!("replica-home-{i}"));
            let mut args = vec!["--home".to_string(), none.display().to_string()];
            if i == 0 {
                args.extend(exported.iter().cloned());
            } else {
                args.extend(
                    ["serve", "--registry", &url, "--addr", "127.0.0.1:0"].map(String::from),
                );
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            start_kiln(&k, &args)
        })
        .collect();
    let urls: Vec<String> = replicas.iter().map(|(_, u)| u.clone()).collect();
    let (_, rows) = records(data, "label", 1);
    let row = Value::Array(rows[0].as_object().unwrap().values().cloned().collect());
    let converged = |want: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        for u in &urls {
            loop {
                if served_version(u, &row).as_deref() == Ok(want) {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{u} did not move to version {want}"
                );
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    };
    converged("1");
    // Load on every replica while the champion moves ten times: no request fails.
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let (sent, failed) = (
        std::sync::Arc::new(AtomicUsize::new(0)),
        std::sync::Arc::new(AtomicUsize::new(0)),
    );
    let load: Vec<_> = urls
        .iter()
        .cloned()
        .map(|u| {
            let (stop, sent, failed, row) =
                (stop.clone(), sent.clone(), failed.clone(), row.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    sent.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = served_version(&u, &row) {
                        eprintln!("{u}: {e}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for i in 0..10 {
        let target = if i % 2 == 0 { "2" } else { "1" };
        kiln(&[
            "models", "promote", "bc", target, "--server", &url, "--token", "s3cret",
        ]);
        converged(target);
    }
    // The central server goes away: the replicas keep answering with what they have.
    drop(central);
    std::thread::sleep(std::time::Duration::from_millis(500));
    for u in &urls {
        assert_eq!(
            served_version(u, &row).as_deref(),
            Ok("1"),
            "{u} while the central server is down"
        );
        let mut m = util::agent().get(format!("{u}/metrics")).call().unwrap();
        let text = m.body_mut().read_to_string().unwrap();
        assert!(text.contains("kiln_registry_staleness_seconds"), "{text}");
    }
    // Back on the same address, with a move made while it was away: every replica converges.
    kiln(&["models", "promote", "bc", "2"]);
    let addr = url.trim_start_matches("http://").to_string();
    let (central, _) = start_kiln(
        &k,
        &[
            "--home", &home, "serve", "--addr", &addr, "--token", "s3cret",
        ],
    );
    converged("2");
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    assert!(sent.load(Ordering::Relaxed) > 30, "{sent:?}");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during the moves"
    );
    // A replica's cache keeps what it serves: once old enough, a bundle no loaded version uses
    // goes when the next change evicts.
    let bundles = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
            .collect()
    };
    assert_eq!(bundles().len(), 2, "{:?}", bundles());
    for b in bundles() {
        let aged = std::process::Command::new("touch")
            .args(["-d", "1 hour ago"])
            .arg(&b)
            .status()
            .unwrap();
        assert!(aged.success());
    }
    kiln(&[
        "models", "promote", "bc", "1", "--server", &url, "--token", "s3cret",
    ]);
    converged("1");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while bundles().len() != 1 {
        assert!(std::time::Instant::now() < deadline, "{:?}", bundles());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(served_version(&urls[0], &row).as_deref(), Ok("1"));
    drop(replicas);
    drop(central);
    for i in 0..3 {
        assert!(!k.path(&format!("replica-home-{i}")).exists());
    }
}

//! A pipeline exported for a workflow engine runs as the engine runs it and ends as
//! `kiln pipeline run` ends: each step a separate `kiln pipeline step` process in an empty
//! working directory of its own, with a clean environment, given only the artifacts the export
//! declares, its records going to a central kiln over HTTP.
#![allow(clippy::unwrap_used)]

mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Every kind of step: a command with values, metrics and a file; components reading it;
/// the gate's `if`; a condition that is false and a step that needs it (both skipped); a
/// `for_each` over a list parameter, and a step reading all its items' values.
const PIPELINE: &str = r#"
name = "engines"

[params]
rows = 3000
epochs = 2
model = "ctr"
min_auc = 0.55
regions = ["us", "eu"]

[[steps]]
id = "generate"
run = "kiln data synth ctr --rows ${params.rows} --seed 7 -o ${outputs}/ctr.csv && echo lines=$(wc -l < ${outputs}/ctr.csv) >> $KILN_VALUES && echo quality=0.5 >> $KILN_METRICS && echo quality=0.75 >> $KILN_METRICS"

[[steps]]
id = "ingest"
needs = ["generate"]
uses = "ingest"
with = { path = "${steps.generate.ctr.csv}" }

[[steps]]
id = "train"
needs = ["ingest"]
uses = "train"
with = { data = "${steps.ingest.data}", target = "click", model = "logistic", epochs = "${params.epochs}", seed = 3 }
retries = 1
timeout = "5m"

[[steps]]
id = "evaluate"
needs = ["train", "ingest"]
uses = "evaluate"
with = { model = "${steps.train.model}", data = "${steps.ingest.data}", baseline = "${params.model}@champion", thresholds = { roc_auc = "${params.min_auc}" } }

[[steps]]
id = "push"
needs = ["evaluate", "train"]
uses = "push"
with = { model = "${steps.train.model}", name = "${params.model}", blessing = "${steps.evaluate.blessed}" }
if = "${steps.evaluate.blessed}"

[[steps]]
id = "decide"
needs = ["push"]
run = "echo go=false >> $KILN_VALUES"

[[steps]]
id = "gated"
needs = ["decide"]
run = "echo should-not-run > ${outputs}/ran"
if = "${steps.decide.go}"

[[steps]]
id = "after-gated"
needs = ["gated"]
run = "echo should-not-run > ${outputs}/ran"

[[steps]]
id = "report"
needs = ["evaluate"]
for_each = "${params.regions}"
run = "echo ${item}: ${steps.evaluate.metric} > ${outputs}/report.txt && echo region=${item} >> $KILN_VALUES"

[[steps]]
id = "summary"
needs = ["report"]
run = "echo 'regions=${steps.report.region}' >> $KILN_VALUES"
"#;

const TOKEN: &str = "engine-token-0123456789";

/// Copies a directory tree (as an engine hands an artifact over).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A container path (`/kiln/...`) inside a step's own directory.
fn in_container(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// Fills in what Argo fills in; anything else left in `{{…}}` is a placeholder Argo would not
/// know at this point, and fails the test.
fn argo_fill(text: &str, params: &BTreeMap<String, String>, workflow: &str) -> String {
    let mut out = text
        .replace("{{workflow.name}}", workflow)
        .replace("{{workflow.creationTimestamp}}", "2026-11-30T09:30:00Z");
    for (k, v) in params {
        out = out.replace(&format!("{{{{workflow.parameters.{k}}}}}"), v);
    }
    assert!(!out.contains("{{"), "a placeholder Argo would leave: {out}");
    out
}

/// Runs an exported Argo WorkflowTemplate the way Argo's controller runs its DAG, one task at a
/// time in dependency order; returns each task's output directory, by task name.
fn run_argo(
    k: &util::Kiln,
    template: &Value,
    central: &str,
    workflow: &str,
) -> BTreeMap<String, PathBuf> {
    let spec = &template["spec"];
    let params: BTreeMap<String, String> = spec["arguments"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let templates: BTreeMap<&str, &Value> = spec["templates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap(), t))
        .collect();
    let dag = templates[spec["entrypoint"].as_str().unwrap()]["dag"]["tasks"]
        .as_array()
        .unwrap();
    let mut done: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut left: Vec<&Value> = dag.iter().collect();
    while !left.is_empty() {
        let i = left
            .iter()
            .position(|t| {
                t["dependencies"]
                    .as_array()
                    .is_none_or(|d| d.iter().all(|d| done.contains_key(d.as_str().unwrap())))
            })
            .expect("a task whose dependencies all ran");
        let task = left.remove(i);
        let name = task["name"].as_str().unwrap();
        let t = templates[task["template"].as_str().unwrap()];
        let root = k.path(&format!("engine/{name}"));
        std::fs::create_dir_all(&root).unwrap();
        // Input artifacts: only those the task is given, where the template puts them.
        for input in t["inputs"]["artifacts"].as_array().unwrap() {
            let arg = task["arguments"]["artifacts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["name"] == input["name"])
                .unwrap();
            let from = arg["from"].as_str().unwrap();
            let producer = from
                .strip_prefix("{{tasks.")
                .and_then(|r| r.strip_suffix(".outputs.artifacts.outputs}}"))
                .unwrap();
            copy_tree(
                &done[producer],
                &in_container(&root, input["path"].as_str().unwrap()),
            );
        }
        let container = &t["container"];
        let args: Vec<String> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                let a = argo_fill(a.as_str().unwrap(), &params, workflow);
                if a.starts_with("/kiln/") {
                    in_container(&root, &a).display().to_string()
                } else {
                    a
                }
            })
            .collect();
        assert_eq!(container["command"], serde_json::json!(["kiln"]));
        let limit = t["retryStrategy"]["limit"].as_u64().unwrap_or(0);
        let mut attempt = 0;
        loop {
            let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"));
            c.args(&args)
                .current_dir(&root)
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap())
                .env("HOME", &root);
            for e in container["env"].as_array().unwrap() {
                let value = match e["value"].as_str() {
                    Some(v) => v.to_string(),
                    None => {
                        let secret = &e["valueFrom"]["secretKeyRef"];
                        assert_eq!(secret["name"], "kiln-token");
                        assert_eq!(secret["key"], "token");
                        TOKEN.to_string()
                    }
                };
                let value = if e["name"] == "KILN_SERVER" {
                    central.to_string()
                } else {
                    value
                };
                c.env(e["name"].as_str().unwrap(), value);
            }
            let out = c.output().unwrap();
            let code = out.status.code().unwrap_or(-1);
            if code == 0 {
                break;
            }
            attempt += 1;
            assert!(
                code != 1 && attempt <= limit,
                "task {name} failed ({code}):\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let outputs = in_container(
            &root,
            t["outputs"]["artifacts"][0]["path"].as_str().unwrap(),
        );
        // The output parameters Argo reads are there.
        for p in t["outputs"]["parameters"].as_array().unwrap() {
            let path = in_container(&root, p["valueFrom"]["path"].as_str().unwrap());
            assert!(
                path.exists() || p["valueFrom"].get("default").is_some(),
                "{}",
                path.display()
            );
        }
        done.insert(name.to_string(), outputs);
    }
    done
}

fn record(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join(".kiln/step.json")).unwrap()).unwrap()
}

/// What must come out the same in both runs: the value, unless it names a file (the
/// directories differ), a run id or a time.
fn comparable(values: &Value) -> BTreeMap<String, String> {
    values
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, v)| {
            !v.as_str().unwrap().starts_with('/') && !matches!(k.as_str(), "run" | "latency_us")
        })
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn an_exported_argo_workflow_ends_as_kiln_pipeline_run_ends() {
    let k = util::Kiln::new();
    let file = k.file("engines.toml", PIPELINE);
    let file_text = file.display().to_string();

    // Locally.
    let local = k.run_home(&["pipeline", "run", &file_text, "--json"]);
    assert_eq!(local.code, 0, "{}", local.stderr);
    let local: Value = serde_json::from_str(&local.stdout).unwrap();
    let local_steps: BTreeMap<String, &Value> = local["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["id"].as_str().unwrap().to_string(), s))
        .collect();

    // On the engine: a central kiln of its own, with a token.
    let elsewhere = util::Kiln::new();
    let central = util::Served::start(
        &elsewhere,
        &["serve", "--addr", "127.0.0.1:0", "--token", TOKEN],
    );
    let out = k
        .command()
        .args([
            "pipeline",
            "export",
            &file_text,
            "--to",
            "argo",
            "--image",
            "kiln:test",
            "--file-in-image",
            &file_text,
            "--registry",
            "http://kiln.kiln.svc:8080",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let docs: Vec<Value> = text
        .split("\n---\n")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(docs.len(), 1, "no schedule, no CronWorkflow");
    assert_eq!(docs[0]["kind"], "WorkflowTemplate");
    let outputs = run_argo(&k, &docs[0], &central.url, "engines-x7k2p");

    // The same steps, in the same states, with the same values.
    let engine: BTreeMap<String, Value> = outputs
        .values()
        .map(|d| {
            let r = record(d);
            (r["step"].as_str().unwrap().to_string(), r)
        })
        .collect();
    let expected: BTreeSet<&str> = local_steps
        .iter()
        .filter(|(_, s)| !s["reason"].as_str().unwrap_or("").starts_with("fanned out"))
        .map(|(id, _)| id.as_str())
        .collect();
    assert_eq!(
        engine.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        expected
    );
    for (id, r) in &engine {
        let l = local_steps[id];
        assert_eq!(r["state"], l["state"], "{id}: {r} against {l}");
        assert_eq!(comparable(&r["values"]), comparable(&l["values"]), "{id}");
    }
    assert_eq!(engine["gated"]["state"], "skipped");
    assert_eq!(engine["after-gated"]["state"], "skipped");
    assert!(!outputs["gated"].join("ran").exists());
    assert_eq!(engine["push"]["values"]["version"], "1");
    assert_eq!(engine["summary"]["values"]["regions"], r#"["us","eu"]"#);
    assert!(outputs["report-eu"].join("report.txt").exists());
    assert_eq!(engine["generate"]["values"]["quality"], "0.75");

    // The central kiln holds what the run pushed, tagged with the engine's run.
    let show = k
        .command()
        .args(["models", "show", "ctr", "--json", "--server", &central.url])
        .output()
        .unwrap();
    assert!(
        show.status.success(),
        "{}",
        String::from_utf8_lossy(&show.stderr)
    );
    let model: Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(model["aliases"]["champion"], 1, "{model}");
    let run = engine["push"]["values"]["run"].as_str().unwrap();
    let run_out = k
        .command()
        .args(["runs", "show", run, "--json", "--server", &central.url])
        .output()
        .unwrap();
    let run: Value = serde_json::from_slice(&run_out.stdout).unwrap();
    assert_eq!(run["tags"]["kiln.pipeline_run"], "engines-x7k2p", "{run}");
    assert_eq!(run["tags"]["kiln.pipeline_step"], "train", "{run}");
    // The command's metrics are a run of their own there.
    let runs = k
        .command()
        .args([
            "runs",
            "list",
            "--experiment",
            "engines",
            "--json",
            "--server",
            &central.url,
        ])
        .output()
        .unwrap();
    let runs = String::from_utf8_lossy(&runs.stdout);
    assert!(runs.contains("generate"), "{runs}");
    drop(central);
}

#[test]
fn a_step_alone_refuses_what_is_ambiguous_and_says_what_to_retry() {
    let k = util::Kiln::new();
    let file = k.file(
        "p.toml",
        "name = \"alone\"\n\
         [[steps]]\nid = \"a\"\nrun = \"echo x=1 >> $KILN_VALUES\"\n\
         [[steps]]\nid = \"b\"\nneeds = [\"a\"]\nrun = \"exit 3\"\n\
         [[steps]]\nid = \"c\"\nneeds = [\"a\"]\nuses = \"ingest\"\nwith = { path = \"${steps.a.missing.csv}\" }\n",
    );
    let f = file.display().to_string();
    let out = k.path("out");
    let a = k.run_home(&[
        "pipeline",
        "step",
        &f,
        "a",
        "--outputs",
        &out.join("a").display().to_string(),
    ]);
    assert_eq!(a.code, 0, "{}", a.stderr);
    // The outputs directory must be empty: a step writes only its own files.
    let again = k.run_home(&[
        "pipeline",
        "step",
        &f,
        "a",
        "--outputs",
        &out.join("a").display().to_string(),
    ]);
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("must be empty"), "{}", again.stderr);
    // An input not given is named, with how to give it.
    let b = k.run_home(&[
        "pipeline",
        "step",
        &f,
        "b",
        "--outputs",
        &out.join("b").display().to_string(),
    ]);
    assert_eq!(b.code, 1);
    assert!(
        b.stderr
            .contains("--inputs DIR (as DIR/a) or --input a=PATH"),
        "{}",
        b.stderr
    );
    // A command that fails may go otherwise next time: 75, which the export retries.
    let inputs = out.display().to_string();
    let b = k.run_home(&[
        "pipeline",
        "step",
        &f,
        "b",
        "--inputs",
        &inputs,
        "--outputs",
        &k.path("b").display().to_string(),
    ]);
    assert_eq!(b.code, 75, "{}", b.stderr);
    assert_eq!(record(&k.path("b"))["state"], "failed");
    // A component refusing its argument would refuse again: 1, not retried.
    let c = k.run_home(&[
        "pipeline",
        "step",
        &f,
        "c",
        "--input",
        &format!("a={}", out.join("a").display()),
        "--outputs",
        &k.path("c").display().to_string(),
    ]);
    assert!(c.code == 1 || c.code == 75, "{}", c.stderr);
    // Unknown step: the file's steps are listed.
    let d = k.run_home(&[
        "pipeline",
        "step",
        &f,
        "d",
        "--outputs",
        &k.path("d").display().to_string(),
    ]);
    assert_eq!(d.code, 1);
    assert!(d.stderr.contains("its steps are a, b, c"), "{}", d.stderr);
    // Someone else's outputs are not taken for a's.
    std::fs::create_dir_all(k.path("fake/a")).unwrap();
    copy_tree(&k.path("b"), &k.path("fake/a"));
    let b = k.run_home(&[
        "pipeline",
        "step",
        &f,
        "b",
        "--inputs",
        &k.path("fake").display().to_string(),
        "--outputs",
        &k.path("b2").display().to_string(),
    ]);
    assert_eq!(b.code, 1);
    assert!(
        b.stderr.contains("holds the outputs of step `b`"),
        "{}",
        b.stderr
    );
}

#[test]
fn an_exported_sweep_runs_its_trials_as_steps_and_registers_the_best() {
    let k = util::Kiln::new();
    let sweep = k.file(
        "small.sweep.toml",
        "method = \"random\"\ntrials = 3\nseed = 1\nmetric = \"loss\"\n\
         [base]\nmodel = \"mlp\"\nepochs = 3\nseed = 5\n\
         [space]\nlr = { log_uniform = [0.001, 0.05] }\nhidden = { choice = [[8], [16, 8]] }\n",
    );
    let dir = k.path("exported");
    let data = util::repo_root().join("examples/data/breast_cancer.csv");
    let out = k
        .command()
        .args([
            "sweep",
            "--config",
            &sweep.display().to_string(),
            "--data",
            &data.display().to_string(),
            "--target",
            "label",
            "--register",
            "bc",
            "--export",
            "argo",
            "-o",
            &dir.display().to_string(),
            "--image",
            "kiln:test",
            "--registry",
            "http://kiln.kiln.svc:8080",
            "--file-in-image",
            &dir.join("sweep-small-sweep.toml").display().to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = dir.join("sweep-small-sweep.toml");
    // The same pipeline, here.
    let local = k.run_home(&["pipeline", "run", &file.display().to_string(), "--json"]);
    assert_eq!(local.code, 0, "{}", local.stderr);
    let local: Value = serde_json::from_str(&local.stdout).unwrap();
    let board = local["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "leaderboard")
        .unwrap();
    assert_eq!(board["values"]["version"], "1");

    // On the engine.
    let elsewhere = util::Kiln::new();
    let central = util::Served::start(
        &elsewhere,
        &["serve", "--addr", "127.0.0.1:0", "--token", TOKEN],
    );
    let text = std::fs::read_to_string(dir.join("sweep-small-sweep.argo.yaml")).unwrap();
    let template: Value = serde_json::from_str(&text).unwrap();
    let dag = &template["spec"]["templates"][0]["dag"]["tasks"];
    assert_eq!(dag.as_array().unwrap().len(), 4);
    // The trials run side by side: none depends on another.
    for t in dag
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["name"] != "leaderboard")
    {
        assert!(t.get("dependencies").is_none(), "{t}");
    }
    let outputs = run_argo(&k, &template, &central.url, "sweep-q9z");
    let engine = record(&outputs["leaderboard"]);
    assert_eq!(comparable(&engine["values"]), comparable(&board["values"]));
    for trial in ["trial-1", "trial-2", "trial-3"] {
        let l = local["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == trial)
            .unwrap();
        assert_eq!(
            comparable(&record(&outputs[trial])["values"]),
            comparable(&l["values"]),
            "{trial}"
        );
    }
    let show = k
        .command()
        .args(["models", "show", "bc", "--json", "--server", &central.url])
        .output()
        .unwrap();
    let model: Value = serde_json::from_slice(&show.stdout).unwrap();
    let version = &model["versions"][0]["version"];
    assert_eq!(version["version"], 1, "{model}");
    assert!(
        version["description"]
            .as_str()
            .unwrap()
            .starts_with("best of 3 trials"),
        "{model}"
    );
    // Methods that choose trials from earlier ones are refused.
    let tpe = k.file(
        "tpe.toml",
        "method = \"tpe\"\ntrials = 4\n[space]\nlr = { uniform = [0.01, 0.1] }\n",
    );
    let r = k.run(&[
        "sweep",
        "--config",
        &tpe.display().to_string(),
        "--data",
        &data.display().to_string(),
        "--target",
        "label",
        "--export",
        "kfp",
        "-o",
        &dir.display().to_string(),
        "--image",
        "kiln:test",
    ]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("use method = \"random\" or \"grid\""),
        "{}",
        r.stderr
    );
}

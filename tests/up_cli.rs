//! `kiln up`: one process with the registry, the scheduler and the server. A pipeline run
//! started over the API pushes a model that the same process then serves; the CLI inspects runs
//! through `--server`; SIGTERM cancels a running step and records it as cancelled.
#![allow(clippy::unwrap_used)]

mod util;

use std::time::{Duration, Instant};

use serde_json::Value;

type Up = util::Served;

fn start_up(k: &util::Kiln, extra: &[&str]) -> Up {
    let mut args = vec![
        "up",
        "--pipeline",
        "examples/pipelines/retrain.toml",
        "--addr",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    util::Served::start(k, &args)
}

fn get(url: &str) -> (u16, Value) {
    let mut r = util::agent().get(url).call().unwrap();
    let status = r.status().as_u16();
    (status, r.body_mut().read_json().unwrap_or(Value::Null))
}

fn start_run(up: &Up, body: &Value, token: Option<&str>) -> (u16, Value) {
    let mut r = util::agent().post(format!("{}/api/pipelines/retrain-ctr/runs", up.url));
    if let Some(t) = token {
        r = r.header("Authorization", &format!("Bearer {t}"));
    }
    let mut r = r.send_json(body).unwrap();
    (r.status().as_u16(), r.body_mut().read_json().unwrap())
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn state_of(up: &Up, run: u64) -> Value {
    get(&format!("{}/api/pipeline-runs/{run}", up.url)).1
}

#[test]
fn a_run_over_the_api_pushes_a_model_that_is_served_and_sigterm_cancels_steps() {
    let k = util::Kiln::new();
    let up = start_up(&k, &["--token", "s3cret"]);
    let (status, pipelines) = get(&format!("{}/api/pipelines", up.url));
    assert_eq!(status, 200);
    assert_eq!(pipelines[0]["pipeline"], "retrain-ctr");
    assert_eq!(pipelines[0]["cron"], "0 3 * * *");
    assert!(
        pipelines[0]["next_fire"]
            .as_str()
            .unwrap()
            .contains("T03:00:00")
    );

    let small = serde_json::json!({"params": {"rows": 3000, "epochs": 3, "min_auc": 0.6}});
    let (status, answer) = start_run(&up, &small, None);
    assert_eq!(status, 401, "{answer}");
    let (status, answer) = start_run(
        &up,
        &serde_json::json!({"params": {"rowz": 1}}),
        Some("s3cret"),
    );
    assert_eq!(status, 400);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("no parameter `rowz`"),
        "{answer}"
    );
    let (status, answer) = start_run(&up, &small, Some("s3cret"));
    assert_eq!(status, 202, "{answer}");
    let run = answer["run"].as_u64().unwrap();
    wait_for("the run", || state_of(&up, run)["state"] != "running");
    let record = state_of(&up, run);
    assert_eq!(record["state"], "succeeded", "{record}");

    // The pushed model is served by the same process.
    wait_for("the model to go live", || {
        get(&format!("{}/v2/models/ctr/ready", up.url)).0 == 200
    });

    // The command line reads runs through the API (the process owns KILN_HOME).
    let server = up.url.clone();
    let out = k.ok(&["pipeline", "runs", "--server", &server]);
    assert!(
        out.contains("retrain-ctr") && out.contains("succeeded"),
        "{out}"
    );
    let out = k.ok(&[
        "pipeline",
        "logs",
        &run.to_string(),
        "train",
        "--server",
        &server,
    ]);
    assert!(
        out.contains("== train attempt 1") && out.contains("test roc_auc"),
        "{out}"
    );
    let r = k.run(&["pipeline", "runs"]);
    assert!(
        r.stderr.contains("is in use by process") && r.stderr.contains("--server URL"),
        "{}",
        r.stderr
    );
    // `pipeline run --server` starts the run in the server and follows it: the same
    // parameters as the API's run, so every step comes from the cache.
    let run_args = [
        "pipeline",
        "run",
        "examples/pipelines/retrain.toml",
        "--param",
        "rows=3000",
        "--param",
        "epochs=3",
        "--param",
        "min_auc=0.6",
        "--server",
        &server,
    ];
    let r = k.run(&run_args);
    assert!(r.stderr.contains("401"), "{}", r.stderr);
    let mut with_token = run_args.to_vec();
    with_token.extend(["--token", "s3cret"]);
    let r = k.run(&with_token);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("pipeline `retrain-ctr` run 2 succeeded")
            && r.stdout.contains("(10 of 10 steps cached")
            && r.stderr.contains("run 2 started in the kiln up at"),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
    // A backfill in the server: its copy of the pipeline at each time its schedule fires.
    let out = k.ok(&[
        "pipeline",
        "backfill",
        "examples/pipelines/retrain.toml",
        "--from",
        "2026-11-01",
        "--to",
        "2026-11-02",
        "--param",
        "rows=3000",
        "--param",
        "epochs=3",
        "--param",
        "min_auc=0.6",
        "--json",
        "--server",
        &server,
        "--token",
        "s3cret",
    ]);
    let backfilled: Value = serde_json::from_str(&out).unwrap();
    let dates: Vec<&str> = backfilled
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["logical_date"].as_str().unwrap())
        .collect();
    assert_eq!(dates.len(), 2, "{backfilled}");
    assert!(
        dates[0].starts_with("2026-11-01") && dates[1].starts_with("2026-11-02"),
        "{dates:?}"
    );
    // Pruning is a change: it needs the token; a dry run deletes nothing.
    let r = k.run(&["pipeline", "prune", "--keep", "1", "--server", &server]);
    assert!(r.stderr.contains("401"), "{}", r.stderr);
    let out = k.ok(&[
        "pipeline",
        "prune",
        "--keep",
        "1",
        "--dry-run",
        "--json",
        "--server",
        &server,
        "--token",
        "s3cret",
    ]);
    let pruned: Value = serde_json::from_str(&out).unwrap();
    for p in pruned.as_array().unwrap() {
        assert!(
            std::path::Path::new(p["dir"].as_str().unwrap()).is_dir(),
            "{p}"
        );
    }
    // The REPL talks to it over HTTP too.
    let script = k.file(
        "up.kiln",
        "pipeline runs
pipeline show 1
pipeline validate examples/pipelines/retrain.toml
models list
models show ctr
runs list --where \"metrics.test_roc_auc > 0.5\"
runs show 1
use ctr@champion
predict {\"i1\": 1, \"i2\": 38.1, \"i3\": 0.37, \"i4\": null, \"i5\": 256.6, \"i6\": 34, \"i7\": 983, \"i8\": 0.0006,
  \"c1\": \"c1_0\", \"c2\": \"c2_0\", \"c3\": \"c3_3\", \"c4\": \"c4_1\", \"c5\": \"c5_d\"}
",
    );
    let out = k.ok(&[
        "repl",
        "--server",
        &server,
        "--script",
        &script.display().to_string(),
    ]);
    assert!(
        out.contains("pipeline `retrain-ctr` run 1 succeeded")
            && out.contains("pipeline `retrain-ctr` is valid"),
        "{out}"
    );
    assert!(
        out.contains("champion→1") && out.contains("test_roc_auc"),
        "{out}"
    );
    // The run that trained it, listed and shown through the API (with its loss curve).
    assert!(
        out.contains("00000001") && out.contains("finished") && out.contains("kiln.pipeline_run"),
        "{out}"
    );
    assert!(out.contains("validation_loss"), "{out}");
    assert!(out.contains("{\"label\":\""), "{out}");
    // Promotion through the API, from the command line.
    let r = k.run(&["models", "promote", "ctr", "1", "--server", &server]);
    assert!(r.stderr.contains("401"), "{}", r.stderr);
    let out = k.ok(&[
        "models", "promote", "ctr", "1", "--server", &server, "--token", "s3cret",
    ]);
    assert!(
        out.contains(
            "ctr version 1 is now in Production (alias `champion`, which serving follows; was version 1)"
        ),
        "{out}"
    );
    let out = k.ok(&["models", "list", "--server", &server]);
    assert!(out.contains("champion→1"), "{out}");
    let out = k.ok(&["runs", "list", "--server", &server, "--json"]);
    let runs: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(runs[0]["id"], "00000001", "{runs}");
    assert!(runs[0]["metrics"]["test_roc_auc"].as_f64().unwrap() > 0.5);
    let (status, answer) = get(&format!("{server}/api/runs?wher=x"));
    assert_eq!(status, 400);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .ends_with("did you mean `where`?"),
        "{answer}"
    );
    let out = k.ok(&["runs", "compare", "1", "1", "--server", &server]);
    assert!(out.contains("metrics.test_roc_auc"), "{out}");
    let out = k.ok(&[
        "models",
        "alias",
        "set",
        "ctr",
        "challenger",
        "1",
        "--server",
        &server,
        "--token",
        "s3cret",
    ]);
    assert!(out.contains("ctr@challenger: none → 1"), "{out}");
    let r = k.run(&[
        "runs",
        "list",
        "--server",
        &server,
        "--where",
        "metrics.auc >",
    ]);
    assert!(
        r.stderr.contains("400") && r.stderr.contains("`where`"),
        "{}",
        r.stderr
    );
    // A REPL line goes where the session's registry is: trained here, recorded there.
    let script = k.file(
        "train.kiln",
        "train --data examples/data/breast_cancer.csv --target label --epochs 1 --experiment from-repl\n",
    );
    let out = k
        .command()
        .env("KILN_TOKEN", "s3cret")
        .args(["repl", "--server", &server, "--script"])
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let runs: Value = serde_json::from_str(&k.ok(&[
        "runs",
        "list",
        "--experiment",
        "from-repl",
        "--server",
        &server,
        "--json",
    ]))
    .unwrap();
    assert_eq!(runs.as_array().unwrap().len(), 1, "{runs}");

    // A long run; SIGTERM while it trains cancels the step and the process exits cleanly.
    let long = serde_json::json!({"params": {"rows": 20000, "epochs": 500, "seed": 3}});
    let (status, answer) = start_run(&up, &long, Some("s3cret"));
    assert_eq!(status, 202);
    let long_run = answer["run"].as_u64().unwrap();
    wait_for("training to start", || {
        state_of(&up, long_run)["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == "train" && s["state"] == "running")
    });
    let mut up = up;
    std::process::Command::new("kill")
        .args(["-TERM", &up.child.id().to_string()])
        .status()
        .unwrap();
    let start = Instant::now();
    let code = up.child.wait().unwrap().code();
    assert_eq!(code, Some(0));
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "took {:?} to stop",
        start.elapsed()
    );
    let out = k.ok(&["pipeline", "show", &long_run.to_string(), "--json"]);
    let record: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(record["state"], "cancelled", "{record}");
    let train = record["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "train")
        .unwrap();
    assert_eq!(train["state"], "cancelled", "{train}");
}

/// Answers one HTTP request with 200 and hands its body over.
fn webhook() -> (String, std::sync::mpsc::Receiver<String>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Ok((mut stream, _)) = listener.accept() {
            let mut data = Vec::new();
            let mut buf = [0u8; 65536];
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
                data.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&data);
                if let Some(head_end) = text.find("\r\n\r\n") {
                    let length = text[..head_end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if data.len() >= head_end + 4 + length {
                        break;
                    }
                }
            }
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
            let text = String::from_utf8_lossy(&data).into_owned();
            let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
            let _ = tx.send(body);
        }
    });
    (url, rx)
}

#[test]
fn drifting_traffic_triggers_retraining_and_the_webhook() {
    let k = util::Kiln::new();
    let (hook, received) = webhook();
    let up = start_up(
        &k,
        &[
            "--retrain-on-drift",
            "ctr=retrain-ctr",
            "--drift-webhook",
            &hook,
            "--drift-check",
            "200ms",
            "--log-sample",
            "1",
        ],
    );
    let small = serde_json::json!({"params": {"rows": 3000, "epochs": 3, "min_auc": 0.6}});
    let (status, answer) = start_run(&up, &small, None);
    assert_eq!(status, 202, "{answer}");
    wait_for("the first run", || state_of(&up, 1)["state"] == "succeeded");
    wait_for("ctr to go live", || {
        get(&format!("{}/v2/models/ctr/ready", up.url)).0 == 200
    });

    // Traffic whose `i2` is far outside anything seen in training.
    let data = k.path("ctr.csv");
    k.ok(&[
        "data",
        "synth",
        "ctr",
        "--rows",
        "600",
        "--seed",
        "11",
        "-o",
        &data.display().to_string(),
    ]);
    let text = std::fs::read_to_string(&data).unwrap();
    let mut rows = text.lines();
    let header: Vec<&str> = rows.next().unwrap().split(',').collect();
    let columns: Vec<&str> = header.iter().copied().filter(|c| *c != "click").collect();
    let records: Vec<Vec<Value>> = rows
        .map(|line| {
            header
                .iter()
                .zip(line.split(','))
                .filter(|(c, _)| **c != "click")
                .map(|(c, v)| match (c.starts_with('c'), v.parse::<f64>()) {
                    (_, _) if v.is_empty() => Value::Null,
                    (false, Ok(x)) if *c == "i2" => serde_json::json!(x * 1000.0 + 1e6),
                    (false, Ok(x)) => serde_json::json!(x),
                    _ => Value::String(v.to_string()),
                })
                .collect()
        })
        .collect();
    for chunk in records.chunks(100) {
        let body = serde_json::json!({"dataframe_split": {"columns": columns, "data": chunk}});
        let mut r = util::agent()
            .post(format!("{}/invocations?model=ctr", up.url))
            .send_json(&body)
            .unwrap();
        assert_eq!(
            r.status().as_u16(),
            200,
            "{}",
            r.body_mut().read_to_string().unwrap()
        );
    }
    // The log's thread takes the rows in on its own tick: wait until it has seen them all.
    let drift = || get(&format!("{}/api/models/ctr/drift", up.url)).1;
    wait_for("the window to hold the 600 rows", || {
        drift()["versions"][0]["observed"].as_u64() >= Some(600)
    });
    let drift = drift();
    assert!(
        drift["alarms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "i2"),
        "{drift}"
    );
    let posted = received.recv_timeout(Duration::from_secs(60)).unwrap();
    let posted: Value = serde_json::from_str(&posted).unwrap();
    assert_eq!(posted["model"], "ctr");
    assert!(
        posted["alarms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "i2"),
        "{posted}"
    );
    wait_for("a run started by the drift", || {
        get(&format!("{}/api/pipeline-runs", up.url))
            .1
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["trigger"] == "drift")
    });
}

#[test]
fn over_http_a_parameter_is_data_and_a_hostile_page_changes_nothing() {
    let k = util::Kiln::new();
    let file = k.file(
        "echo.toml",
        "name = \"echo\"\n[params]\nrows = 10\nlabel = \"x\"\n\n[[steps]]\nid = \"say\"\nrun = \"echo ${params.rows} ${params.label} > ${outputs}/said\"\n",
    );
    let up = util::Served::start(
        &k,
        &[
            "up",
            "--pipeline",
            &file.display().to_string(),
            "--addr",
            "127.0.0.1:0",
        ],
    );
    let url = format!("{}/api/pipelines/echo/runs", up.url);
    let post = |body: &str, headers: &[(&str, &str)]| {
        let mut r = util::agent()
            .post(&url)
            .header("Content-Type", "application/json");
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let mut r = r.send(body).unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    };
    // An integer parameter takes integers only, refused before a run is recorded.
    let (status, answer) = post(r#"{"params": {"rows": "1; touch PWNED #"}}"#, &[]);
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer.contains("`rows`") && answer.contains("integer"),
        "{answer}"
    );
    // A string parameter is text, whatever it holds.
    let hostile = "$(touch PWNED); `touch PWNED` ' \" \n touch PWNED";
    let body = serde_json::json!({"params": {"label": hostile}}).to_string();
    let (status, answer) = post(&body, &[]);
    assert_eq!(status, 202, "{answer}");
    let run: Value = serde_json::from_str(&answer).unwrap();
    let id = run["run"].as_u64().unwrap();
    wait_for("the run", || state_of(&up, id)["state"] != "running");
    assert_eq!(state_of(&up, id)["state"], "succeeded");
    let said =
        std::fs::read_to_string(k.path("home/pipelines/echo/1/steps/say/outputs/said")).unwrap();
    assert_eq!(said, format!("10 {hostile}\n"));
    assert!(!k.path("PWNED").exists() && !util::repo_root().join("PWNED").exists());
    // What another site's page can send: a text/plain form, a foreign Origin, a rebinding Host.
    let mut r = util::agent()
        .post(&url)
        .header("Content-Type", "text/plain")
        .send("{}")
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        415,
        "{}",
        r.body_mut().read_to_string().unwrap()
    );
    assert_eq!(post("{}", &[("Origin", "http://evil.example")]).0, 403);
    let host = util::agent()
        .get(format!("{}/api/pipeline-runs", up.url))
        .header("Host", "evil.example")
        .call()
        .unwrap();
    assert_eq!(host.status().as_u16(), 421);
    let runs = get(&format!("{}/api/pipeline-runs", up.url)).1;
    assert_eq!(runs.as_array().unwrap().len(), 1, "{runs}");

    // The registry of a running kiln is backed up through it, into its backup directory.
    let local = k.run_home(&["registry", "backup", k.path("b").to_str().unwrap()]);
    assert_eq!(local.code, 1);
    assert!(local.stderr.contains("--server"), "{}", local.stderr);
    let remote = k.run_home(&["registry", "backup", "--server", &up.url, "--json"]);
    assert_eq!(remote.code, 0, "{}", remote.stderr);
    let summary: Value = serde_json::from_str(&remote.stdout).unwrap();
    let dir = summary["dir"].as_str().unwrap();
    assert!(dir.contains("backups/kiln-backup-"), "{dir}");
    assert!(std::path::Path::new(dir).join("registry").is_dir());
    let r = k.run(&["--home", dir, "registry", "check"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
}

#[test]
fn unsafe_settings_are_refused_at_start() {
    let k = util::Kiln::new();
    for (args, says) in [
        (vec!["serve", "--addr", "0.0.0.0:0"], "--insecure-no-auth"),
        (vec!["serve", "--token", ""], "empty"),
        (
            vec!["serve", "--protect-reads"],
            "--protect-reads needs a token",
        ),
    ] {
        let r = k.run_home(&args);
        assert_eq!(r.code, 1, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(says), "{args:?}: {}", r.stderr);
    }
}

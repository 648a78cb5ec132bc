//! `kiln pipeline validate`: the example is valid and planned; a broken file gets every problem
//! as FILE:LINE:COL and exit code 3.
#![allow(clippy::unwrap_used)]

mod util;

#[test]
fn the_example_validates_and_a_broken_file_lists_every_problem() {
    let k = util::Kiln::new();
    let out = k.ok(&["pipeline", "validate", "examples/pipelines/retrain.toml"]);
    assert!(
        out.contains("pipeline `retrain-ctr` is valid: 10 steps in 9 levels"),
        "{out}"
    );
    assert!(
        out.contains("schedule `0 3 * * *` (catch-up latest, overlap skip)"),
        "{out}"
    );

    let broken = k.file(
        "broken.toml",
        "name = \"p\"\n[schedule]\ncron = \"every day\"\n\n[[steps]]\nid = \"a\"\nneeds = [\"b\"]\nuses = \"ingest\"\nwith = { path = \"no-such.csv\" }\n\n[[steps]]\nid = \"b\"\nneeds = [\"a\"]\nrun = \"true\"\n",
    );
    let broken = broken.display().to_string();
    let r = k.run(&["pipeline", "validate", &broken]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "{broken}:3:8: error: cron expression \"every day\""
        )),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(&format!(
            "{broken}:6:1: error: the steps form a cycle: a → b → a"
        )),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("error: step `a`: `with.path` names no-such.csv, which does not exist"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("pipeline `p`: 3 errors"), "{}", r.stderr);

    let r = k.run(&["pipeline", "validate", "--json", &broken]);
    assert_eq!(r.code, 3);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["diagnostics"].as_array().unwrap().len(), 3);
    // Running it refuses before anything runs, with the same problems.
    let r = k.run(&["pipeline", "run", &broken]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("has 3 error(s)") && r.stderr.contains("no-such.csv"),
        "{}",
        r.stderr
    );

    let r = k.run(&["pipeline", "validate", "no-such.toml"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("reading no-such.toml"), "{}", r.stderr);
}

fn run_json(k: &util::Kiln, id: u64) -> serde_json::Value {
    let out = k.ok(&["pipeline", "show", &id.to_string(), "--json"]);
    serde_json::from_str(&out).unwrap()
}

fn step<'a>(run: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap()
}

fn champion(k: &util::Kiln) -> serde_json::Value {
    let out = k.ok(&["models", "show", "ctr", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["aliases"]["champion"].clone()
}

/// Small and quick: 3,000 rows, 3 epochs.
const SMALL: [&str; 6] = [
    "--param",
    "rows=3000",
    "--param",
    "epochs=3",
    "--param",
    "min_auc=0.6",
];

#[test]
fn the_example_pipeline_pushes_caches_retrains_and_keeps_a_worse_model_out() {
    let k = util::Kiln::new();
    let file = "examples/pipelines/retrain.toml";
    let mut args = vec!["pipeline", "run", file];
    args.extend_from_slice(&SMALL);
    let out = k.ok(&args);
    assert!(
        out.contains("pipeline `retrain-ctr` run 1 succeeded"),
        "{out}"
    );
    let first = run_json(&k, 1);
    assert_eq!(step(&first, "push")["values"]["version"], "1");
    assert_eq!(step(&first, "evaluate")["values"]["blessed"], "true");
    assert_eq!(champion(&k), 1);
    // Lineage: the version's run carries the pipeline run that made it.
    let version: serde_json::Value =
        serde_json::from_str(&k.ok(&["models", "versions", "ctr", "--json"])).unwrap();
    let run_id = version["versions"][0]["version"]["run_id"]
        .as_u64()
        .unwrap();
    let run: serde_json::Value =
        serde_json::from_str(&k.ok(&["runs", "show", &format!("{run_id:08x}"), "--json"])).unwrap();
    assert_eq!(run["tags"]["kiln.pipeline_run"], "1", "{run}");
    assert!(run["lineage"]["dataset_fingerprint"].is_string());

    // Unchanged: every step is cached, from run 1, and says so.
    let out = k.ok(&args);
    assert!(out.contains("(10 of 10 steps cached"), "{out}");
    let second = run_json(&k, 2);
    for s in second["steps"].as_array().unwrap() {
        assert_eq!(s["state"], "cached", "{s}");
        assert_eq!(s["cached_from"], 1);
        assert!(s["reason"].as_str().unwrap().contains("as in run 1"), "{s}");
    }
    assert_eq!(champion(&k), 1);

    // Changed data: generated anew, so ingested, trained and evaluated anew.
    let mut changed = args.clone();
    changed.extend_from_slice(&["--param", "seed=8"]);
    k.ok(&changed);
    let third = run_json(&k, 3);
    for id in ["generate", "ingest", "train", "evaluate"] {
        assert_eq!(step(&third, id)["state"], "succeeded", "{id}");
    }
    let champion_now = champion(&k);

    // A deliberately worse model (almost no learning) loses to the champion on the same rows
    // and is not pushed, though it passes the absolute threshold set to 0.
    let worse = [
        "pipeline",
        "run",
        file,
        "--param",
        "rows=3000",
        "--param",
        "epochs=1",
        "--param",
        "lr=0.000001",
        "--param",
        "seed=9",
        "--param",
        "min_auc=0",
    ];
    k.ok(&worse);
    let fourth = run_json(&k, 4);
    let evaluate = step(&fourth, "evaluate");
    assert_eq!(evaluate["values"]["blessed"], "false", "{evaluate}");
    assert!(
        evaluate["values"]["reason"]
            .as_str()
            .unwrap()
            .contains("misses the minimum"),
        "{evaluate}"
    );
    assert_eq!(step(&fourth, "push")["state"], "skipped");
    assert_eq!(champion(&k), champion_now);

    // Forcing a step reruns it.
    let mut forced = args.clone();
    forced.extend_from_slice(&["--force", "statistics"]);
    k.ok(&forced);
    let fifth = run_json(&k, 5);
    assert_eq!(step(&fifth, "statistics")["state"], "succeeded");
    assert_eq!(step(&fifth, "validate")["state"], "cached");

    let runs = k.ok(&["pipeline", "runs"]);
    assert!(
        runs.contains("retrain-ctr") && runs.lines().count() >= 6,
        "{runs}"
    );

    // The evaluation's slices (`slices = ["c1"]`) in the step's values, on the run's page and on
    // the page of the version it pushed.
    assert!(
        step(&third, "evaluate")["values"]["worst_slice"]
            .as_str()
            .unwrap()
            .starts_with("c1="),
        "{}",
        step(&third, "evaluate")
    );
    let served = util::Served::start(&k, &["serve", "--addr", "127.0.0.1:0"]);
    let page = |path: &str| -> String {
        util::agent()
            .get(&format!("{}{path}", served.url))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap()
    };
    let run_page = page("/ui/pipeline-runs/3");
    assert!(
        run_page.contains("Slices of step evaluate") && run_page.contains("c1=c1_0"),
        "{run_page}"
    );
    let version_page = page("/ui/models/ctr/versions/1");
    assert!(
        version_page.contains("Slices of step evaluate"),
        "{version_page}"
    );
    served.stop();
}

#[test]
fn a_failing_step_is_retried_keeps_its_logs_and_stops_its_dependents() {
    let k = util::Kiln::new();
    let p = k.file(
        "p.toml",
        "name = \"f\"\n[[steps]]\nid = \"fail\"\nrun = \"echo boom $KILN_ATTEMPT; exit 2\"\nretries = 1\n\n[[steps]]\nid = \"after\"\nneeds = [\"fail\"]\nrun = \"true\"\n",
    );
    let p = p.display().to_string();
    let r = k.run(&["pipeline", "run", &p]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("pipeline run 1 failed at step `fail`"),
        "{}",
        r.stderr
    );
    let logs = k.ok(&["pipeline", "logs", "1", "fail"]);
    assert!(
        logs.contains("== fail attempt 1") && logs.contains("boom 1"),
        "{logs}"
    );
    assert!(
        logs.contains("== fail attempt 2") && logs.contains("boom 2"),
        "{logs}"
    );
    let run = run_json(&k, 1);
    assert_eq!(step(&run, "fail")["attempts"], 2);
    assert_eq!(step(&run, "after")["state"], "upstream_failed");
    // A component's wrong argument is not retried: the step fails at its first attempt.
    let data = k.file("d.csv", "x,y\n1,0\n2,1\n3,0\n");
    let q = k.file(
        "q.toml",
        format!(
            "name = \"q\"\n[[steps]]\nid = \"train\"\nuses = \"train\"\nwith = {{ data = \"{}\", target = \"label\" }}\nretries = 2\n",
            data.display()
        ),
    );
    let r = k.run(&["pipeline", "run", &q.display().to_string()]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let run = run_json(&k, 2);
    let train = step(&run, "train");
    assert_eq!(train["attempts"], 1, "{train}");
    assert!(
        train["error"]
            .as_str()
            .unwrap()
            .contains("target column `label` is not in the data"),
        "{train}"
    );
    assert!(
        train["reason"].as_str().unwrap().starts_with("not retried"),
        "{train}"
    );
    // Unknown step, parameter and run: clear errors.
    let r = k.run(&["pipeline", "logs", "1", "fial"]);
    assert!(r.stderr.contains("did you mean `fail`?"), "{}", r.stderr);
    let r = k.run(&["pipeline", "run", &p, "--param", "x=1"]);
    assert!(
        r.stderr
            .contains("pipeline `f` has no parameter `x`; it takes none"),
        "{}",
        r.stderr
    );
    let r = k.run(&["pipeline", "show", "99"]);
    assert!(r.stderr.contains("no pipeline run `99`"), "{}", r.stderr);
}

#[test]
fn backfill_runs_once_per_fire_with_its_date() {
    let k = util::Kiln::new();
    let p = k.file(
        "daily.toml",
        "name = \"daily\"\n[schedule]\ncron = \"30 2 * * *\"\n[[steps]]\nid = \"stamp\"\nrun = \"echo ${date} > ${outputs}/date\"\n",
    );
    let p = p.display().to_string();
    let out = k.ok(&[
        "pipeline",
        "backfill",
        &p,
        "--from",
        "2026-11-01",
        "--to",
        "2026-11-03",
    ]);
    assert_eq!(out.matches("backfill").count(), 3, "{out}");
    let runs: serde_json::Value =
        serde_json::from_str(&k.ok(&["pipeline", "runs", "--json"])).unwrap();
    let dates: Vec<&str> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["logical_date"].as_str().unwrap())
        .collect();
    assert_eq!(dates, ["2026-11-03", "2026-11-02", "2026-11-01"]);
    let r = k.run(&[
        "pipeline",
        "backfill",
        &p,
        "--from",
        "2026-11-03",
        "--to",
        "2026-11-01",
    ]);
    assert!(r.stderr.contains("is before --from"), "{}", r.stderr);
    let r = k.run(&["pipeline", "schedule", "pause", "daily"]);
    assert!(
        r.stderr.contains("no schedule for pipeline `daily`"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_relative_kiln_home_still_gives_commands_paths_that_work() {
    let k = util::Kiln::new();
    std::fs::create_dir_all(k.path("pipes")).unwrap();
    let p = k.file(
        "pipes/rel.toml",
        "name = \"rel\"\n[[steps]]\nid = \"make\"\nrun = \"seq 3 > ${outputs}/n\"\n\n[[steps]]\nid = \"use\"\nneeds = [\"make\"]\nrun = \"wc -l < ${steps.make.n} > ${outputs}/count\"\n",
    );
    // KILN_HOME relative to where kiln starts; commands run in the pipeline file's directory.
    let out = k
        .command()
        .current_dir(k.dir.path())
        .env_remove("KILN_HOME")
        .args([
            "--home",
            "relhome",
            "pipeline",
            "run",
            &p.display().to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let count =
        std::fs::read_to_string(k.path("relhome/pipelines/rel/1/steps/use/outputs/count")).unwrap();
    assert_eq!(count.trim(), "3");
}

#[test]
fn prune_deletes_old_runs_files_but_keeps_what_the_cache_reuses() {
    let k = util::Kiln::new();
    let p = k.file(
        "p.toml",
        "name = \"keep\"\n[params]\nn = 1\n\n[[steps]]\nid = \"a\"\nrun = \"echo ${params.n} > ${outputs}/x\"\n",
    );
    let p = p.display().to_string();
    for n in ["1", "2", "3", "3"] {
        k.ok(&["pipeline", "run", &p, "--param", &format!("n={n}")]);
    }
    let dir = |run: u64| run_json(&k, run)["dir"].as_str().unwrap().to_string();
    let dirs: Vec<String> = (1..=4).map(dir).collect();
    // Run 4 reused run 3's outputs from the cache.
    assert_eq!(step(&run_json(&k, 4), "a")["cached_from"], 3);

    let out = k.ok(&["pipeline", "prune", "--keep", "1", "--dry-run", "--json"]);
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let runs: Vec<u64> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["run"].as_u64().unwrap())
        .collect();
    assert_eq!(runs, [2, 1], "{listed}");
    assert!(dirs.iter().all(|d| std::path::Path::new(d).exists()));

    let out = k.ok(&["pipeline", "prune", "--keep", "1"]);
    assert!(out.contains("deleted the files of 2 runs"), "{out}");
    assert!(!std::path::Path::new(&dirs[0]).exists());
    assert!(!std::path::Path::new(&dirs[1]).exists());
    assert!(
        std::path::Path::new(&dirs[2]).exists(),
        "run 3 backs run 4's cache hit"
    );
    let logs = k.ok(&["pipeline", "logs", "1", "a"]);
    assert!(logs.contains("deleted by `kiln pipeline prune`"), "{logs}");
    // The records stay, and the cache still serves n=3.
    assert_eq!(run_json(&k, 1)["state"], "succeeded");
    k.ok(&["pipeline", "run", &p, "--param", "n=3"]);
    assert_eq!(step(&run_json(&k, 5), "a")["state"], "cached");

    // A server says so too: the API and the web UI answer 404 with the reason.
    let up = util::Served::start(&k, &["up", "--addr", "127.0.0.1:0"]);
    let agent = util::agent();
    for path in [
        "/api/pipeline-runs/1/logs/a/1",
        "/ui/pipeline-runs/1/logs/a/1",
    ] {
        let mut r = agent.get(format!("{}{path}", up.url)).call().unwrap();
        assert_eq!(r.status().as_u16(), 404, "{path}");
        let text = r.body_mut().read_to_string().unwrap();
        assert!(
            text.contains("deleted (`kiln pipeline prune`)"),
            "{path}: {text}"
        );
    }
}

#[test]
fn a_killed_kiln_leaves_no_step_running_and_steps_never_see_the_token() {
    let k = util::Kiln::new();
    let p = k.file(
        "orphan.toml",
        "name = \"orphan\"\n[[steps]]\nid = \"long\"\nrun = \"echo t=$KILN_TOKEN > ${outputs}/token; echo $$ > ${outputs}/pid; sleep 60\"\n",
    );
    let home = k.path("home").display().to_string();
    let mut child = k
        .command()
        .env("KILN_TOKEN", "s3cret-token")
        .args(["--home", &home, "pipeline", "run", &p.display().to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid_file = k.path("home/pipelines/orphan/1/steps/long/outputs/pid");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !pid_file.exists()
        || std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the step never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let token = std::fs::read_to_string(k.path("home/pipelines/orphan/1/steps/long/outputs/token"))
        .unwrap();
    assert_eq!(token.trim(), "t=");
    child.kill().unwrap();
    child.wait().unwrap();
    let group = format!("-{}", std::fs::read_to_string(&pid_file).unwrap().trim());
    let mut alive = true;
    for _ in 0..100 {
        alive = std::process::Command::new("kill")
            .args(["-0", "--", &group])
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success();
        if !alive {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(!alive, "the step's process group {group} outlived kiln");
}

/// A receiver on loopback that answers `statuses` in turn, one request each, and hands back
/// each request's head and body.
fn receiver(statuses: Vec<u16>) -> (String, std::thread::JoinHandle<Vec<(String, String)>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://{}/hooks/T000/secret",
        listener.local_addr().unwrap()
    );
    let handle = std::thread::spawn(move || {
        let mut got = Vec::new();
        for status in statuses {
            let (stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(std::time::Duration::from_secs(30)))
                .unwrap();
            let mut reader = BufReader::new(stream);
            let mut head = String::new();
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                head.push_str(&line);
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let reply =
                format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            reader.get_mut().write_all(reply.as_bytes()).unwrap();
            got.push((head, String::from_utf8(body).unwrap()));
        }
        got
    });
    (url, handle)
}

#[test]
fn a_failed_run_runs_its_failure_steps_and_posts_its_summary_until_received() {
    let k = util::Kiln::new();
    let (url, received) = receiver(vec![503, 200]);
    let p = k.file(
        "p.toml",
        format!(
            "name = \"nightly\"\nnotify = \"{url}\"\n\n[[steps]]\nid = \"train\"\nrun = \"echo 'loss is NaN'; exit 4\"\n\n[[steps]]\nid = \"push\"\nneeds = [\"train\"]\nrun = \"true\"\n\n[[on_failure]]\nid = \"alert\"\nrun = \"echo \\\"$KILN_FAILED_STEP: $KILN_FAILED_LOG_TAIL\\\"\"\n"
        ),
    );
    let r = k.run(&["pipeline", "run", &p.display().to_string()]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let run = run_json(&k, 1);
    assert_eq!(run["state"], "failed");
    assert_eq!(step(&run, "push")["state"], "upstream_failed");
    assert_eq!(step(&run, "alert")["state"], "succeeded");
    let logs = k.ok(&["pipeline", "logs", "1", "alert"]);
    assert!(logs.contains("train: loss is NaN"), "{logs}");
    // The receiver refused the first post; the second try got through.
    let got = received.join().unwrap();
    assert_eq!(got.len(), 2);
    assert!(
        got[0].0.starts_with("POST /hooks/T000/secret HTTP/1.1"),
        "{}",
        got[0].0
    );
    assert!(
        got[0]
            .0
            .to_ascii_lowercase()
            .contains("content-type: application/json")
    );
    assert_eq!(got[0].1, got[1].1);
    let summary: serde_json::Value = serde_json::from_str(&got[1].1).unwrap();
    assert_eq!(summary["pipeline"], "nightly");
    assert_eq!(summary["state"], "failed");
    assert_eq!(summary["failed_steps"][0]["id"], "train");
    assert!(
        summary["text"]
            .as_str()
            .unwrap()
            .contains("failed at step train"),
        "{summary}"
    );
    // A receiver that never answers costs the run nothing but a warning with the host alone.
    let p = k.file(
        "q.toml",
        "name = \"quiet\"\nnotify = \"http://127.0.0.1:9/hooks/secret-token\"\n[[steps]]\nid = \"a\"\nrun = \"true\"\n",
    );
    let r = k
        .command()
        .args(["pipeline", "run", &p.display().to_string()])
        .env("KILN_LOG", "warn")
        .output()
        .unwrap();
    assert!(r.status.success());
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(
        stderr.contains("could not be posted to its notify URL"),
        "{stderr}"
    );
    assert!(!stderr.contains("secret-token"), "{stderr}");
}

#[test]
fn the_first_run_pins_the_schema_and_later_data_that_breaks_it_stops_at_validate() {
    let k = util::Kiln::new();
    let rows = |f: &dyn Fn(usize) -> String| -> String {
        (0..40).map(|i| f(i) + "\n").collect::<String>()
    };
    let colour = |i: usize| ["red", "blue"][i % 2];
    let good = k.file(
        "good.csv",
        format!(
            "x,colour,label\n{}",
            rows(&|i| format!("{},{},{}", i, colour(i), i % 2))
        ),
    );
    let lost = k.file(
        "lost.csv",
        format!("x,label\n{}", rows(&|i| format!("{},{}", i, i % 2))),
    );
    let moved = k.file(
        "moved.csv",
        format!(
            "x,colour,label\n{}",
            rows(&|i| format!("{},{},{}", i * 1000, ["green", "teal"][i % 2], i % 2))
        ),
    );
    let p = k.file(
        "p.toml",
        "name = \"nightly\"\n[params]\ndata = \"good.csv\"\n\n[[steps]]\nid = \"ingest\"\nuses = \"ingest\"\nwith = { path = \"${params.data}\" }\n\n[[steps]]\nid = \"validate\"\nneeds = [\"ingest\"]\nuses = \"validate\"\nwith = { data = \"${steps.ingest.data}\" }\n\n[[steps]]\nid = \"train\"\nneeds = [\"validate\"]\nrun = \"echo trained\"\n",
    );
    let p = p.display().to_string();
    let data = |path: &std::path::Path| format!("data={}", path.display());
    // The first run pins what its data looks like.
    k.ok(&["pipeline", "run", &p, "--param", &data(&good)]);
    let shown = k.ok(&["pipeline", "schema", "show", "nightly"]);
    assert!(
        shown.contains("step `validate`: pinned from run 1")
            && shown
                .contains("inferred by kiln: inferred from the data of the pipeline's first run"),
        "{shown}"
    );
    assert!(shown.contains("name = \"colour\""), "{shown}");
    // A column lost: refused at validate, nothing downstream runs.
    let r = k.run(&["pipeline", "run", &p, "--param", &data(&lost)]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let run = run_json(&k, 2);
    assert_eq!(step(&run, "validate")["state"], "failed");
    assert_eq!(step(&run, "train")["state"], "upstream_failed");
    let error = step(&run, "validate")["error"].as_str().unwrap();
    assert!(error.contains("colour"), "{error}");
    // Unseen categories and a moved range: both named.
    let r = k.run(&["pipeline", "run", &p, "--param", &data(&moved)]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let run = run_json(&k, 3);
    assert_eq!(step(&run, "train")["state"], "upstream_failed");
    let diff: serde_json::Value = serde_json::from_str(&k.ok(&[
        "pipeline", "schema", "diff", "nightly", "--run", "3", "--json",
    ]))
    .unwrap();
    let kinds: Vec<(&str, &str)> = diff["anomalies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["column"].as_str().unwrap(), a["kind"].as_str().unwrap()))
        .collect();
    assert!(
        kinds.contains(&("colour", "unseen_categories")),
        "{kinds:?}"
    );
    assert!(kinds.contains(&("x", "out_of_range")), "{kinds:?}");
    assert_eq!(diff["pinned"]["pin"]["run"], 1);
    assert!(
        diff["proposed"].as_str().unwrap().contains("teal"),
        "{diff}"
    );
    // Accepting the new data's schema, with a reason, lets such data through.
    let r = k.run(&[
        "pipeline", "schema", "accept", "nightly", "--run", "3", "--reason", "",
    ]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("say why"), "{}", r.stderr);
    let out = k.ok(&[
        "pipeline",
        "schema",
        "accept",
        "nightly",
        "--run",
        "3",
        "--reason",
        "new colours launched; x is now in milli-units",
    ]);
    assert!(
        out.contains("pinned the schema of run 3's data for step `validate`"),
        "{out}"
    );
    k.ok(&["pipeline", "run", &p, "--param", &data(&moved)]);
    let shown = k.ok(&["pipeline", "schema", "show", "nightly"]);
    assert!(
        shown.contains("pinned from run 3")
            && shown.contains("accepted by")
            && shown.contains("new colours launched")
            && shown.contains("before: run 1"),
        "{shown}"
    );
    // Data that passed under the first pin is judged again under the accepted one, not served
    // from the cache: its colours are no longer the pinned ones.
    let r = k.run(&["pipeline", "run", &p, "--param", &data(&good)]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let run = run_json(&k, 5);
    assert_eq!(step(&run, "validate")["state"], "failed");
    assert!(
        step(&run, "validate")["error"]
            .as_str()
            .unwrap()
            .contains("colour"),
        "{run}"
    );
    // A pipeline with none pinned says how one gets pinned.
    let r = k.run(&["pipeline", "schema", "show", "other"]);
    assert!(r.stderr.contains("has no pinned schema"), "{}", r.stderr);

    // The same through a server that holds the KILN_HOME.
    let served = util::Served::start(&k, &["serve", "--addr", "127.0.0.1:0"]);
    let remote = |args: &[&str]| -> String {
        let mut all = args.to_vec();
        all.extend(["--server", served.url.as_str()]);
        k.ok(&all)
    };
    let pins: serde_json::Value = serde_json::from_str(&remote(&[
        "pipeline", "schema", "show", "nightly", "--json",
    ]))
    .unwrap();
    assert_eq!(pins[0]["pin"]["run"], 3);
    assert_eq!(pins[0]["pin"]["how"], "accepted");
    assert_eq!(pins[0]["earlier"][0]["run"], 1);
    let diff: serde_json::Value = serde_json::from_str(&remote(&[
        "pipeline", "schema", "diff", "nightly", "--run", "2", "--json",
    ]))
    .unwrap();
    assert_eq!(diff["step"], "validate");
    assert_eq!(diff["anomalies"][0]["kind"], "missing_column", "{diff}");
    let out = remote(&[
        "pipeline",
        "schema",
        "accept",
        "nightly",
        "--run",
        "1",
        "--reason",
        "back to the start",
    ]);
    assert!(out.contains("pinned the schema of run 1's data"), "{out}");
    let pins: serde_json::Value = serde_json::from_str(&remote(&[
        "pipeline", "schema", "show", "nightly", "--json",
    ]))
    .unwrap();
    assert_eq!(pins[0]["pin"]["run"], 1);
    assert_eq!(pins[0]["pin"]["reason"], "back to the start");
    assert_eq!(pins[0]["earlier"].as_array().unwrap().len(), 2);
    served.stop();
}

#[test]
fn validate_reports_drift_since_the_last_successful_run() {
    let k = util::Kiln::new();
    let table = |f: &dyn Fn(usize) -> usize| -> String {
        let rows: String = (0..600).map(|i| format!("{},c{}\n", f(i), i % 3)).collect();
        format!("x,c\n{rows}")
    };
    let first = k.file("first.csv", table(&|i| i % 100));
    let same = k.file("same.csv", table(&|i| (i * 7) % 100));
    // Still inside the pinned range, but all in its top tenth.
    let shifted = k.file("shifted.csv", table(&|i| 90 + i % 10));
    let p = k.file(
        "p.toml",
        "name = \"spans\"\n[params]\ndata = \"first.csv\"\nfail_on = \"error\"\n\n[[steps]]\nid = \"ingest\"\nuses = \"ingest\"\nwith = { path = \"${params.data}\" }\n\n[[steps]]\nid = \"validate\"\nneeds = [\"ingest\"]\nuses = \"validate\"\nwith = { data = \"${steps.ingest.data}\", fail_on = \"${params.fail_on}\" }\n",
    );
    let p = p.display().to_string();
    let data = |path: &std::path::Path| format!("data={}", path.display());
    k.ok(&["pipeline", "run", &p, "--param", &data(&first)]);
    // The same distribution: nothing moved.
    k.ok(&["pipeline", "run", &p, "--param", &data(&same)]);
    let logs = k.ok(&["pipeline", "logs", "2", "validate"]);
    assert!(
        logs.contains("drift against the data of run 1 (its last success): 0 of 2 columns moved"),
        "{logs}"
    );
    // A moved distribution is a warning: where warnings stop the run, it stops at validate...
    let r = k.run(&[
        "pipeline",
        "run",
        &p,
        "--param",
        &data(&shifted),
        "--param",
        "fail_on=warning",
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let run = run_json(&k, 3);
    let error = step(&run, "validate")["error"].as_str().unwrap();
    assert!(
        error.contains("x: column `x` drifted from run 2's data: psi"),
        "{error}"
    );
    assert!(!error.contains("column `c` drifted"), "{error}");
    // ...and otherwise it is reported and the run goes on (still against run 2, the last success).
    k.ok(&["pipeline", "run", &p, "--param", &data(&shifted)]);
    let logs = k.ok(&["pipeline", "logs", "4", "validate"]);
    assert!(
        logs.contains("warning: x: column `x` drifted from run 2's data: psi"),
        "{logs}"
    );
}

//! Every registry and training command against a running server (`--server`), which owns its
//! `KILN_HOME`: experiments, runs (create, log, artifact, end, delete), models (register, alias,
//! history, export, delete) and `kiln train` whose run and version land in the server's
//! registry. And what a hostile client or page can send to the artifact and tracking endpoints.
#![allow(clippy::unwrap_used)]

mod util;

use serde_json::Value;

const TOKEN: &str = "s3cret";

/// `kiln ARGS --server URL --token TOKEN`, expected to succeed; stdout.
fn remote(k: &util::Kiln, url: &str, args: &[&str]) -> String {
    let mut all = args.to_vec();
    all.extend(["--server", url, "--token", TOKEN]);
    k.ok(&all)
}

fn remote_fails(k: &util::Kiln, url: &str, args: &[&str]) -> String {
    let mut all = args.to_vec();
    all.extend(["--server", url, "--token", TOKEN]);
    let r = k.run(&all);
    assert_eq!(r.code, 1, "kiln {all:?} should fail:\n{}", r.stdout);
    r.stderr
}

fn blake3_of(bytes: &[u8]) -> String {
    format!("blake3:{}", blake3::hash(bytes).to_hex())
}

#[test]
fn every_registry_command_and_training_work_against_a_running_server() {
    let k = util::Kiln::new();
    let server = util::Served::start(&k, &["serve", "--addr", "127.0.0.1:0", "--token", TOKEN]);
    let url = server.url.clone();

    remote(&k, &url, &["experiments", "create", "churn"]);
    remote(&k, &url, &["experiments", "rename", "churn", "churn-2026"]);
    let run = remote(
        &k,
        &url,
        &[
            "runs",
            "create",
            "--experiment",
            "churn-2026",
            "--param",
            "lr=0.1",
        ],
    )
    .trim()
    .to_string();
    remote(
        &k,
        &url,
        &["runs", "log", &run, "--metric", "auc=0.81", "--step", "3"],
    );
    remote(&k, &url, &["runs", "log", &run, "--tag", "team=growth"]);
    // Values a JSON number cannot hold travel by name and come back as they were.
    remote(&k, &url, &["runs", "log", &run, "--metric", "loss=nan"]);
    // A directory artifact, with a nested file, uploaded object by object.
    let model = k.path("model");
    std::fs::create_dir_all(model.join("weights")).unwrap();
    std::fs::write(model.join("manifest.json"), b"{\"kind\": \"test\"}").unwrap();
    std::fs::write(model.join("weights/w.bin"), vec![7u8; 300_000]).unwrap();
    let out = remote(
        &k,
        &url,
        &["runs", "artifact", &run, model.to_str().unwrap()],
    );
    assert!(out.contains("(300016 bytes)"), "{out}");
    remote(&k, &url, &["runs", "end", &run]);

    let shown: Value =
        serde_json::from_str(&remote(&k, &url, &["runs", "show", &run, "--json"])).unwrap();
    assert_eq!(shown["status"], "finished", "{shown}");
    assert_eq!(shown["params"]["lr"], "0.1");
    assert_eq!(shown["tags"]["team"], "growth");
    assert_eq!(shown["metrics"]["auc"]["value"], 0.81);
    assert_eq!(shown["metrics"]["loss"]["value"], "NaN");
    assert_eq!(shown["artifacts"][0]["kind"], "directory");
    let listed: Value =
        serde_json::from_str(&remote(&k, &url, &["experiments", "list", "--json"])).unwrap();
    let churn = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "churn-2026")
        .unwrap();
    assert_eq!(churn["runs"], 1);

    let out = remote(
        &k,
        &url,
        &[
            "models",
            "register",
            "churn",
            "--run",
            &run,
            "--artifact",
            "model",
        ],
    );
    assert!(out.contains("registered churn version 1"), "{out}");
    remote(
        &k,
        &url,
        &["models", "alias", "set", "churn", "champion", "1"],
    );
    let history: Value =
        serde_json::from_str(&remote(&k, &url, &["models", "history", "churn", "--json"])).unwrap();
    assert_eq!(history[0]["alias"], "champion");
    assert_eq!(history[0]["to"], 1);
    // Export: every file back, byte for byte, checked against its digest.
    let exported = k.path("exported");
    remote(
        &k,
        &url,
        &[
            "models",
            "export",
            "churn",
            "-o",
            exported.to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read(exported.join("weights/w.bin")).unwrap(),
        vec![7u8; 300_000]
    );
    assert_eq!(
        std::fs::read(exported.join("manifest.json")).unwrap(),
        b"{\"kind\": \"test\"}"
    );
    // The server refuses what the registry refuses, with the registry's words.
    let err = remote_fails(&k, &url, &["models", "delete", "churn", "--version", "1"]);
    assert!(
        err.contains("409") && err.contains("move the alias first"),
        "{err}"
    );
    remote(
        &k,
        &url,
        &["models", "alias", "delete", "churn", "champion"],
    );
    let out = remote(&k, &url, &["models", "delete", "churn"]);
    assert!(out.contains("deleted model churn and 1 versions"), "{out}");

    // Training runs here; its run, metrics, bundle and version land in the server's registry.
    let trained: Value = serde_json::from_str(&remote(
        &k,
        &url,
        &[
            "train",
            "--data",
            "examples/data/breast_cancer.csv",
            "--target",
            "label",
            "--epochs",
            "3",
            "--register",
            "bc",
            "--json",
        ],
    ))
    .unwrap();
    assert_eq!(trained["registered"]["version"], 1, "{trained}");
    let bc: Value =
        serde_json::from_str(&remote(&k, &url, &["models", "show", "bc", "--json"])).unwrap();
    assert_eq!(
        bc["versions"][0]["version"]["run_id"].as_u64().unwrap(),
        u64::from_str_radix(trained["run"].as_str().unwrap(), 16).unwrap()
    );
    let train_run: Value = serde_json::from_str(&remote(
        &k,
        &url,
        &["runs", "show", trained["run"].as_str().unwrap(), "--json"],
    ))
    .unwrap();
    assert!(train_run["metrics"]["train_loss"]["step"].as_i64().unwrap() >= 1);
    // …and once it is the champion, the server loads it and answers with it.
    remote(&k, &url, &["models", "alias", "set", "bc", "champion", "1"]);
    let mut r = util::agent()
        .get(format!("{url}/v2/models/bc/ready"))
        .header("Authorization", &format!("Bearer {TOKEN}"))
        .call()
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "{}",
        r.body_mut().read_to_string().unwrap()
    );
    // Offline prediction with the server's model, fetched and checked.
    let predictions = k.path("p.csv");
    remote(
        &k,
        &url,
        &[
            "predict",
            "--model",
            "bc:1",
            "--data",
            "examples/data/breast_cancer.csv",
            "-o",
            predictions.to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read_to_string(&predictions)
            .unwrap()
            .lines()
            .count(),
        570
    );

    remote(&k, &url, &["runs", "delete", &run]);
    let err = remote_fails(&k, &url, &["runs", "show", &run]);
    assert!(err.contains("404"), "{err}");
    let out = remote(&k, &url, &["experiments", "delete", "churn-2026"]);
    assert!(
        out.contains("deleted experiment churn-2026 and 0 runs"),
        "{out}"
    );
}

#[test]
fn artifact_and_tracking_endpoints_refuse_what_a_hostile_client_or_page_sends() {
    let k = util::Kiln::new();
    let server = util::Served::start(&k, &["serve", "--addr", "127.0.0.1:0", "--token", TOKEN]);
    let url = server.url.clone();
    let bearer = format!("Bearer {TOKEN}");
    let put = |digest: &str, body: &[u8], content_type: &str, token: bool| {
        let mut r = util::agent()
            .put(format!("{url}/api/artifacts/{digest}"))
            .header("Content-Type", content_type);
        if token {
            r = r.header("Authorization", &bearer);
        }
        let mut answer = r.send(body).unwrap();
        (
            answer.status().as_u16(),
            answer.body_mut().read_to_string().unwrap_or_default(),
        )
    };
    let held = |digest: &str| {
        util::agent()
            .head(format!("{url}/api/artifacts/{digest}"))
            .call()
            .unwrap()
            .status()
            .as_u16()
    };
    let content = b"weights".as_slice();
    let digest = blake3_of(content);

    // No token, the wrong type (a form can send text/plain), or content that is not what the
    // digest says: nothing is stored.
    assert_eq!(
        put(&digest, content, "application/octet-stream", false).0,
        401
    );
    assert_eq!(put(&digest, content, "text/plain", true).0, 415);
    let (status, body) = put(&digest, b"tampered", "application/octet-stream", true);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not") && body.contains(&digest), "{body}");
    assert_eq!(held(&digest), 404);
    for bad in ["..%2F..%2Fetc%2Fpasswd", "blake3:xyz", "sha256:00"] {
        let (status, body) = put(bad, content, "application/octet-stream", true);
        assert_eq!(status, 400, "{bad}: {body}");
    }
    assert_eq!(
        put(&digest, content, "application/octet-stream", true).0,
        200
    );
    assert_eq!(held(&digest), 200);

    // A run to attach to, made over the API.
    let post = |path: &str, body: Value, headers: &[(&str, &str)]| {
        let mut r = util::agent()
            .post(format!("{url}{path}"))
            .header("Authorization", &bearer);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let mut answer = r.send_json(body).unwrap();
        (
            answer.status().as_u16(),
            answer
                .body_mut()
                .read_json::<Value>()
                .unwrap_or(Value::Null),
        )
    };
    let (status, run) = post("/api/runs", serde_json::json!({"experiment": "e"}), &[]);
    assert_eq!(status, 200, "{run}");
    let id = run["id"].as_str().unwrap().to_string();
    // A page on another site cannot start runs, even with the user's token in hand.
    let (status, _) = post(
        "/api/runs",
        serde_json::json!({"experiment": "e"}),
        &[("Sec-Fetch-Site", "cross-site")],
    );
    assert_eq!(status, 403);

    // A directory whose manifest climbs out of the export directory is refused when attached.
    let manifest = serde_json::to_vec(&serde_json::json!({"files": [
        {"path": "../../escaped", "digest": digest, "size": content.len()}
    ]}))
    .unwrap();
    let manifest_digest = blake3_of(&manifest);
    assert_eq!(
        put(
            &manifest_digest,
            &manifest,
            "application/octet-stream",
            true
        )
        .0,
        200
    );
    let (status, answer) = post(
        &format!("/api/runs/{id}/artifacts"),
        serde_json::json!({"name": "model", "digest": manifest_digest, "kind": "directory"}),
        &[],
    );
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("unsafe path"),
        "{answer}"
    );
    // A manifest that lies about a file's size, or names a file never uploaded.
    for files in [
        serde_json::json!([{"path": "w", "digest": digest, "size": 1}]),
        serde_json::json!([{"path": "w", "digest": blake3_of(b"never sent"), "size": 10}]),
    ] {
        let manifest = serde_json::to_vec(&serde_json::json!({ "files": files })).unwrap();
        let d = blake3_of(&manifest);
        put(&d, &manifest, "application/octet-stream", true);
        let (status, answer) = post(
            &format!("/api/runs/{id}/artifacts"),
            serde_json::json!({"name": "model", "digest": d, "kind": "directory"}),
            &[],
        );
        assert_eq!(status, 400, "{answer}");
    }
    // Unknown fields and metric names that are not names are refused, naming what is wrong.
    let (status, answer) = post(
        &format!("/api/runs/{id}/log"),
        serde_json::json!({"metrics": [{"key": "auc", "value": 1.0, "stepp": 2}]}),
        &[],
    );
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("stepp"),
        "{answer}"
    );
    let (status, answer) = post(
        &format!("/api/runs/{id}/log"),
        serde_json::json!({"metrics": [{"key": "", "value": 1.0}]}),
        &[],
    );
    assert_eq!(status, 400, "{answer}");
    // MLflow's artifact proxy: a path that climbs out, or a PUT without the token, stores
    // nothing; a file of the run's own goes in and comes back.
    let proxy = |path: &str, token: bool| {
        let mut r = util::agent()
            .put(format!(
                "{url}/api/2.0/mlflow-artifacts/artifacts/0/{id}/artifacts/{path}"
            ))
            .header("Content-Type", "text/plain");
        if token {
            r = r.header("Authorization", &bearer);
        }
        r.send(&b"notes"[..]).unwrap().status().as_u16()
    };
    for bad in [
        "..%2F..%2Fescaped",
        "a/..%2F..%2Fb",
        "a//b",
        "%2Fetc%2Fpasswd",
    ] {
        assert_eq!(proxy(bad, true), 400, "{bad}");
    }
    assert_eq!(proxy("notes.txt", false), 401);
    assert_eq!(proxy("notes.txt", true), 200);
    let mut back = util::agent()
        .get(format!(
            "{url}/api/2.0/mlflow-artifacts/artifacts/0/{id}/artifacts/notes.txt"
        ))
        .call()
        .unwrap();
    assert_eq!(back.body_mut().read_to_vec().unwrap(), b"notes");
    // The good attachment works, and the run shows it.
    let (status, answer) = post(
        &format!("/api/runs/{id}/artifacts"),
        serde_json::json!({"name": "weights", "digest": digest, "kind": "file"}),
        &[],
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["size"], content.len());
    let mut got = util::agent()
        .get(format!("{url}/api/artifacts/{digest}"))
        .call()
        .unwrap();
    assert_eq!(got.body_mut().read_to_vec().unwrap(), content);
}

/// `--server https://…` through a TLS-terminating proxy in front of `kiln serve`, its
/// certificate signed by a private CA: refused until `--server-ca` names that CA.
#[test]
fn an_https_server_is_reached_with_its_private_ca() {
    let k = util::Kiln::new();
    let dir = k.path("tls");
    std::fs::create_dir_all(&dir).unwrap();
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("openssl (apt-get install openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=kiln test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext",
    ]);
    let server = util::Served::start(&k, &["serve", "--addr", "127.0.0.1:0"]);
    let mut proxy = std::process::Command::new("python3")
        .arg(util::repo_root().join("tests/tls_proxy.py"))
        .args([dir.join("server.pem"), dir.join("server.key")])
        .arg(&server.url)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut port = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(proxy.stdout.take().unwrap()),
        &mut port,
    )
    .unwrap();
    let https = format!("https://127.0.0.1:{}", port.trim());
    // The public roots do not know the private CA.
    let r = k.run(&["models", "list", "--server", &https]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.to_lowercase().contains("certificate"),
        "{}",
        r.stderr
    );
    // With it, the answer comes through TLS.
    let ca = dir.join("ca.pem");
    let out = k.ok(&[
        "models",
        "list",
        "--json",
        "--server",
        &https,
        "--server-ca",
        ca.to_str().unwrap(),
    ]);
    let list: Value = serde_json::from_str(&out).unwrap();
    assert!(list["models"].as_array().unwrap().is_empty(), "{list}");
    // A file that is no certificate is named as such.
    let r = k.run(&[
        "models",
        "list",
        "--server",
        &https,
        "--server-ca",
        dir.join("ext").to_str().unwrap(),
    ]);
    assert!(
        r.stderr.contains("--server-ca") && r.stderr.contains("no certificate"),
        "{}",
        r.stderr
    );
    let _ = proxy.kill();
    let _ = proxy.wait();
}

//! Versions and routing: the management API, traffic splits, shadow traffic, dynamic batching,
//! bearer tokens, and hot swap under load on a real socket.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use common::*;
use kiln_core::registry::Expect;
use kiln_server::ServerConfig;
use serde_json::{Value, json};

fn p1(body: &Value) -> Vec<f64> {
    body["outputs"][1]["data"]
        .as_array()
        .unwrap()
        .chunks(2)
        .map(|p| p[1].as_f64().unwrap())
        .collect()
}

fn v2_body(n: usize) -> Value {
    let records = bc_records(n);
    let columns = bc_columns();
    let data: Vec<Value> = records
        .iter()
        .flat_map(|r| columns.iter().map(|c| r[c].clone()).collect::<Vec<_>>())
        .collect();
    json!({ "inputs": [{ "name": "x", "shape": [n, 30], "datatype": "FP64", "data": data }] })
}

#[tokio::test]
async fn management_api_lists_and_changes_deployments() {
    let f = fixture();
    let s = state(&f, ServerConfig::default()).await;
    let (status, list) = get(&s, "/api/models").await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = list["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bc", "ctr"]);
    assert_eq!(list["models"][0]["live"]["routes"][0]["version"], 1);

    let (status, model) = get(&s, "/api/models/bc").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(model["versions"].as_array().unwrap().len(), 2);
    assert_eq!(model["aliases"]["champion"], 1);
    assert_eq!(
        model["deployment"]["routes"],
        json!([{ "target": "champion", "percent": 100 }])
    );

    // A split that does not add up, and one that names a missing version, are refused.
    let (status, e) = json(
        &s,
        "PUT",
        "/api/models/bc/deployment",
        json!({ "routes": [{ "target": "1", "percent": 60 }, { "target": "2", "percent": 30 }] }),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        e["error"].as_str().unwrap().contains("adds up to 90%"),
        "{e}"
    );
    let (status, e) = json(
        &s,
        "PUT",
        "/api/models/bc/deployment",
        json!({ "routes": [{ "target": "7", "percent": 100 }] }),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{e}");
    let (status, e) = json(
        &s,
        "PUT",
        "/api/models/bc/deployment",
        json!({ "routes": [], "surprise": 1 }),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("unknown field `surprise`"),
        "{e}"
    );

    // 50/50 between versions 1 and 2: both answer, each with its own outputs.
    let (status, d) = json(
        &s,
        "PUT",
        "/api/models/bc/deployment",
        json!({ "routes": [{ "target": "1", "percent": 50 }, { "target": "2", "percent": 50 }] }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{d}");
    assert_eq!(d["live"]["routes"].as_array().unwrap().len(), 2);
    let mut by_version: BTreeMap<String, (usize, Vec<f64>)> = BTreeMap::new();
    for _ in 0..200 {
        let (status, body) = json(&s, "POST", "/v2/models/bc/infer", v2_body(2)).await;
        assert_eq!(status, StatusCode::OK);
        let e = by_version
            .entry(body["model_version"].as_str().unwrap().to_string())
            .or_insert((0, p1(&body)));
        e.0 += 1;
        assert_eq!(e.1, p1(&body), "one version, one answer");
    }
    assert_eq!(by_version.len(), 2, "{by_version:?}");
    for (v, (count, _)) in &by_version {
        assert!((60..=140).contains(count), "version {v} got {count} of 200");
    }
    assert_ne!(by_version["1"].1, by_version["2"].1);

    // The split is stored: a new server over the same registry routes the same way.
    assert_eq!(f.registry.deployment("bc").unwrap().routes.len(), 2);

    // Reset: back to champion only.
    let (status, d) = json(&s, "DELETE", "/api/models/bc/deployment", json!(null)).await;
    assert_eq!(status, StatusCode::OK, "{d}");
    assert_eq!(d["live"]["routes"][0]["target"], "champion");
    let (_, deployments) = get(&s, "/api/deployments").await;
    assert_eq!(deployments["deployments"].as_array().unwrap().len(), 2);

    // Alias moves through the API take effect before the answer.
    let (status, e) = json(
        &s,
        "PUT",
        "/api/models/bc/aliases/champion",
        json!({ "version": 2, "expect": 1, "reason": "better" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{e}");
    let (_, body) = json(&s, "POST", "/v2/models/bc/infer", v2_body(1)).await;
    assert_eq!(body["model_version"], "2");
    let (status, e) = json(
        &s,
        "PUT",
        "/api/models/bc/aliases/champion",
        json!({ "version": 1, "expect": 1 }),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{e}");
    let (status, e) = json(
        &s,
        "POST",
        "/api/models/bc/promote",
        json!({ "version": 2 }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{e}");
    assert_eq!(f.registry.aliases("bc").unwrap()["champion"], 2);
    let (status, _) = json(
        &s,
        "DELETE",
        "/api/models/bc/aliases/champion",
        json!({ "reason": "retire" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, e) = json(&s, "POST", "/v2/models/bc/infer", v2_body(1)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        e["error"].as_str().unwrap().contains("no `champion` yet"),
        "{e}"
    );
    let (status, r) = get(&s, "/v2/health/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{r}");

    // A deleted model stops being served and becomes unknown.
    f.registry.delete_model("ctr", true, "test").unwrap();
    for _ in 0..100 {
        if s.models.live("ctr").is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, e) = json(
        &s,
        "POST",
        "/v1/models/ctr:predict",
        json!({ "instances": [] }),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{e}");
}

#[tokio::test]
async fn shadow_traffic_is_compared_and_counted() {
    let f = fixture();
    let s = state(&f, ServerConfig::default()).await;
    let (status, d) = json(
        &s,
        "PUT",
        "/api/models/bc/deployment",
        json!({ "routes": [{ "target": "champion", "percent": 100 }], "shadow": "2" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{d}");
    for _ in 0..20 {
        let (status, body) = json(&s, "POST", "/v2/models/bc/infer", v2_body(1)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["model_version"], "1", "the shadow never answers");
    }
    // Shadow requests run off the response path; wait for them.
    let mut shadow = Value::Null;
    for _ in 0..100 {
        let (_, d) = get(&s, "/api/deployments").await;
        shadow = d["deployments"][0]["live"]["shadow"].clone();
        if shadow["requests"] == 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(shadow["requests"], 20, "{shadow}");
    assert_eq!(shadow["version"], 2);
    let rate = shadow["agreement_rate"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&rate));
    let (_, m) = get(&s, "/metrics").await;
    assert!(
        m.as_str()
            .unwrap()
            .contains("kiln_shadow_requests_total{model=\"bc\",version=\"2\"} 20")
    );
}

#[tokio::test]
async fn batching_gives_the_same_answers_in_fewer_passes() {
    let f = fixture();
    let s = state(&f, ServerConfig::default()).await;
    let (_, unbatched) = json(&s, "POST", "/v2/models/bc/infer", v2_body(3)).await;
    let (status, d) = json(&s, "PUT", "/api/models/bc/deployment", json!({ "routes": [{ "target": "champion", "percent": 100 }], "batching": { "max_batch": 64, "max_delay_us": 20000 } })).await;
    assert_eq!(status, StatusCode::OK, "{d}");
    assert_eq!(d["live"]["routes"][0]["batching"], true);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { json(&s, "POST", "/v2/models/bc/infer", v2_body(3)).await })
        })
        .collect();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(p1(&body), p1(&unbatched));
    }
    let (_, m) = get(&s, "/metrics").await;
    let m = m.as_str().unwrap();
    let count: f64 = m
        .lines()
        .find(|l| l.starts_with("kiln_batch_rows_count{model=\"bc\""))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(count < 16.0, "16 concurrent requests ran as {count} passes");
    assert!(
        m.contains("kiln_batch_rows_sum{model=\"bc\",version=\"1\"} 48"),
        "{m}"
    );
}

#[tokio::test]
async fn tokens_protect_changes_and_optionally_reads() {
    let f = fixture();
    let s = state(
        &f,
        ServerConfig {
            token: Some("s3cret".into()),
            ..ServerConfig::default()
        },
    )
    .await;
    let body = serde_json::to_vec(&json!({ "version": 2 })).unwrap();
    let (status, _, answer) = call(
        &s,
        "PUT",
        "/api/models/bc/aliases/champion",
        &[("content-type", "application/json")],
        body.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(String::from_utf8_lossy(&answer).contains("Authorization: Bearer"));
    let (status, _, _) = call(
        &s,
        "PUT",
        "/api/models/bc/aliases/champion",
        &[
            ("authorization", "Bearer nope"),
            ("content-type", "application/json"),
        ],
        body.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = call(
        &s,
        "PUT",
        "/api/models/bc/aliases/champion",
        &[
            ("authorization", "Bearer s3cret"),
            ("content-type", "application/json"),
        ],
        body,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // Reads stay open unless asked otherwise.
    assert_eq!(
        json(&s, "POST", "/v2/models/bc/infer", v2_body(1)).await.0,
        StatusCode::OK
    );

    let s = state(
        &f,
        ServerConfig {
            token: Some("s3cret".into()),
            protect_reads: true,
            ..ServerConfig::default()
        },
    )
    .await;
    assert_eq!(
        json(&s, "POST", "/v2/models/bc/infer", v2_body(1)).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(get(&s, "/metrics").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(get(&s, "/api/models").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(get(&s, "/v2/health/ready").await.0, StatusCode::OK);
    let (status, _, _) = call(
        &s,
        "GET",
        "/api/models",
        &[("authorization", "Bearer s3cret")],
        axum::body::Body::empty(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // The web UI: closed too, but the login page is open and its cookie opens the rest.
    assert_eq!(get(&s, "/ui/models").await.0, StatusCode::UNAUTHORIZED);
    let (status, page) = get(&s, "/ui/login").await;
    assert_eq!(status, StatusCode::OK);
    let csrf = csrf_of(page.as_str().unwrap());
    let (status, headers, _) = call(
        &s,
        "POST",
        "/ui/login",
        &[("content-type", "application/x-www-form-urlencoded")],
        format!("token=s3cret&csrf={csrf}"),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let cookie = headers["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let (status, _, _) = call(
        &s,
        "GET",
        "/ui/models",
        &[("cookie", &cookie)],
        axum::body::Body::empty(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = call(
        &s,
        "POST",
        "/ui/login",
        &[("content-type", "application/x-www-form-urlencoded")],
        format!("token=wrong&csrf={csrf}"),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// A client loop sends requests continuously over a real socket while the alias moves between
/// two versions ten times: every request succeeds, and each answer is exactly one version's.
#[test]
fn hot_swap_under_load_drops_no_request() {
    let f = fixture();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (addr, expected, stop_server) = runtime.block_on(async {
        let s = state(&f, ServerConfig::default()).await;
        // Each version's answer, asked by version number.
        let mut expected = BTreeMap::new();
        for v in ["1", "2"] {
            let (_, body) = json(
                &s,
                "POST",
                &format!("/v2/models/bc/versions/{v}/infer"),
                v2_body(2),
            )
            .await;
            expected.insert(v.to_string(), p1(&body));
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(kiln_server::serve(
            listener,
            kiln_server::router(s),
            async {
                let _ = rx.await;
            },
        ));
        (addr, expected, tx)
    });
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(std::sync::Mutex::new(BTreeMap::<String, usize>::new()));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, sent, seen, expected) =
                (stop.clone(), sent.clone(), seen.clone(), expected.clone());
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .build()
                    .into();
                let url = format!("http://{addr}/v2/models/bc/infer");
                let body = v2_body(2);
                while !stop.load(Ordering::Relaxed) {
                    let mut r = agent.post(&url).send_json(&body).unwrap();
                    assert_eq!(r.status(), 200, "a request failed during a swap");
                    let answer: Value = r.body_mut().read_json().unwrap();
                    let v = answer["model_version"].as_str().unwrap().to_string();
                    assert_eq!(
                        p1(&answer),
                        expected[&v],
                        "version {v} answered with another's outputs"
                    );
                    *seen.lock().unwrap().entry(v).or_default() += 1;
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for i in 0..10 {
        let to = if i % 2 == 0 { 2 } else { 1 };
        let before = sent.load(Ordering::Relaxed);
        f.registry
            .set_alias("bc", "champion", to, Expect::Any, "test", "swap")
            .unwrap();
        // Let traffic flow on the new version before the next move.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while sent.load(Ordering::Relaxed) < before + 20 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let _ = stop_server.send(());
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2, "both versions answered: {seen:?}");
    assert!(sent.load(Ordering::Relaxed) >= 200);
}

/// Shutting down stops accepting connections but answers the requests already in flight: one
/// waits (up to a second) in a batch queue while the shutdown starts, and still gets its answer.
#[test]
fn graceful_shutdown_finishes_requests_in_flight() {
    let f = fixture();
    f.registry
        .set_deployment(
            kiln_core::registry::Deployment {
                batching: Some(kiln_core::registry::Batching {
                    max_batch: 64,
                    max_delay_us: 1_000_000,
                }),
                ..kiln_core::registry::Deployment::default_for("bc")
            },
            "test",
        )
        .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (addr, server) = runtime.block_on(async {
        let s = state(&f, ServerConfig::default()).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(kiln_server::serve(
            listener,
            kiln_server::router(s),
            async {
                let _ = rx.await;
            },
        ));
        (addr, server)
    });
    let client = std::thread::spawn(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut r = agent
            .post(&format!("http://{addr}/v2/models/bc/infer"))
            .send_json(v2_body(1))
            .unwrap();
        (r.status(), r.body_mut().read_json::<Value>().unwrap())
    });
    std::thread::sleep(Duration::from_millis(300));
    tx.send(()).unwrap();
    let (status, body) = client.join().unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model_version"], "1");
    runtime.block_on(server).unwrap().unwrap();
    // Nothing listens any more.
    assert!(std::net::TcpStream::connect(addr).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_waiting_for_changes_never_take_the_places_requests_need() {
    let f = fixture();
    let s = state(
        &f,
        ServerConfig {
            max_inflight: 1,
            ..ServerConfig::default()
        },
    )
    .await;
    // Two replicas' long polls: the first waits, the second is over the watchers' places.
    let (_, _, body) = call(&s, "GET", "/api/changes", &[], axum::body::Body::empty()).await;
    let feed: Value = serde_json::from_slice(&body).unwrap();
    let query = format!(
        "/api/changes?epoch={}&after={}&wait=20",
        feed["epoch"], feed["seq"]
    );
    let waiting = {
        let (s, q) = (s.clone(), query.clone());
        tokio::spawn(async move { call(&s, "GET", &q, &[], axum::body::Body::empty()).await.0 })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "the poll waits for a change");
    let (status, _, _) = call(&s, "GET", &query, &[], axum::body::Body::empty()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // Requests still have their place.
    let (status, _, body) = call(&s, "GET", "/v2", &[], axum::body::Body::empty()).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    waiting.abort();
}
